"""Ray Serve application for composed image retrieval: FastAPI ingress, batched query encoder, one searcher
deployment per gallery shard, exact top-k merge. Entry point: ``serve run serve/config.yaml`` (``serve.app:build_app``).
"""
