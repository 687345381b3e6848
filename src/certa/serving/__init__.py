"""``certa serve``: an OpenAI-compatible server with a confidence on every choice.

``schemas`` (request and response bodies, the sampling rules), ``settings`` (limits and batching),
``batcher`` (the ``Scheduler`` seam and micro-batching), ``engine`` (the model side), ``responses``
(OpenAI bodies and streams), ``abstention`` (certified thresholds), ``feedback`` (the SQLite store),
``recalibration`` (online maps), ``loop`` (store and recalibrator for one served method), ``monitor``
(``certa monitor``) and ``app`` (the HTTP side); ``server.serve`` runs it.
"""
