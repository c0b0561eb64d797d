"""Data: image and sequence datasets (``datasets``) and event recordings binned into frames (``events``)."""
