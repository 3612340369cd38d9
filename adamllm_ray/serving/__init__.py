"""Serving: the synthesizer, the judge and evaluated models behind Ray Serve (app.py), with the
method's task routes beside the OpenAI-compatible ones. Heavy imports live in app.py."""
