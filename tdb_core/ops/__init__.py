"""Operations over a model runner, each ``op(runner, spec) -> result`` (data in, data out):

* ``forward``      Forward: prompts with captures (and interventions), next-token top-k;
                   concurrent plain reads share one micro-batched pass; with a loss, gradient
                   captures (``tdb_core.gradients``, shared with ablate).
* ``ablate``       Ablate: a baseline and N intervention sets in one padded batch.
* ``patch_sweep``  PatchSweep: activation patching, clean -> corrupted, cell by cell (exact), or
                   every cell from one forward/backward pair (attribution patching).
* ``weights``      GetWeights: parameters in TransformerLens names, sliced, and folded views.
* ``lens``         LogitLens: residuals read through the final norm and the unembedding.
* ``attribute``    Attribute: TDB's node table (direct effects, act x grad, integrated gradients).
* ``encode``       Encode / Decode with an attached SAE.
* ``mine``         activation records of many nodes in one pass (explanations start here).
* ``sae_data``     SAE training data: token windows, a shuffled activation stream, CE loss.

Siblings: none imports another (shared pieces live in ``common``). Every check a request can fail
is made before its first pass (``tdb_core.checks``).
"""
