"""Automated interpretability: explain nodes in words, simulate them from the words, score the match.

The method is OpenAI's (``automated-interpretability``, as extended in TDB), made independent of
any one LLM provider. Modules, in pipeline order:

* ``records``     — the original JSON record format (ActivationRecord, NeuronRecord), our
                    ``NodeRecords`` wrapper, train/valid splits, token-pair indexing.
* ``mining``      — one pass over a text dataset: top-activating and random windows, density,
                    max and moments for many nodes at once (neurons, latents, heads).
* ``formatting``  — discretization to 0..10 and the record text formats.
* ``prompts``     — prompt builders and completion parsers; ``few_shot`` — their examples.
* ``backends``    — OpenAI-compatible servers and local HF causal LMs behind one protocol.
* ``explainers``  — LLM and token-statistics (``baseline``) explainers, for neurons and heads.
* ``simulators``  — all-at-once (logprobs), logprob-free and baseline simulators.
* ``scoring``     — pooled correlation, detection balanced accuracy, ROC AUC (pure functions).
* ``heads``       — TDB's pair-by-pair head judging and ROC AUC score.
* ``pipeline``    — explain -> simulate -> score for one node, with progress events.
* ``store``       — SQLite persistence of explanations and scores.

Import from the submodules; this package module imports nothing, so light users (the store) do
not pay for torch or transformers.
"""
