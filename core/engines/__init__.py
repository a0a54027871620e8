"""Engines: image files -> aligned Scene. One module per engine, one registry."""
