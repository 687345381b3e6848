"""``certa serve``: an OpenAI-compatible server with a confidence on every choice.

``schemas`` (request bodies), ``settings`` (limits and batching), ``batcher``
(micro-batching), ``engine`` (the model side) and ``app`` (the HTTP side);
``server.serve`` runs it.
"""
