"""Interop: snnrun networks as NIR graphs and back (``nir_export``, ``nir_import``)."""
