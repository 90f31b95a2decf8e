"""Serving a checkpoint over HTTP: `captioning serve` (LitServe with dynamic batching) and its demo page.

server.py builds the server and parses the command line, api.py is the LitAPI that runs the model in an inference
worker, upload.py reads and checks each request before it is queued, and static/ holds the page (HTML, CSS, JS).
"""
