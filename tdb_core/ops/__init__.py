"""Operations over a model runner, each ``op(runner, spec) -> result``.

Modules are siblings; none imports another's internals (shared pieces live in ``common``).
"""
