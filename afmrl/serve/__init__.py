"""Online serving of AFMRL search over HTTP with Ray Serve (the app: serve_apps/search_app.py).

- ``api``: the HTTP surface (FastAPI routes, body limit, bearer auth, ``{"error"}`` bodies)
- ``service``: per-request behaviour behind the routes (validation, enrichment, embed, search)
- ``schemas`` / ``validation``: request and response models, checks on untrusted input
- ``catalog``: the live catalog of a Retriever replica (sharded index, items, update journal)
- ``filters``: exact attribute filtering combined with vector search
- ``enrich``: query attributes from the generator (the AFMRL query)
- ``config_gen`` / ``launch``: Serve options and config file; start the app and wait for it
- ``sample`` / ``loadgen``: a small servable index and a bounded load generator (tests, bench)
"""
