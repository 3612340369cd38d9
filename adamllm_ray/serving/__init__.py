"""Serving: the synthesizer, the judge and evaluated models behind Ray Serve, with the method's task
routes beside the OpenAI-compatible ones: models.py (deployments), ingress.py (app and routes), guard.py,
requests.py and media.py (what a request may be), lifecycle.py (start, readiness, stop), app.py (entry points)."""
