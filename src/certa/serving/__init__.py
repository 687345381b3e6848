"""The pieces of ``certa serve``: request schemas, the micro-batcher, the engine and the app.

Import the public API from ``certa.server``.
"""
