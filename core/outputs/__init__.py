"""Outputs: which points are kept, how they are drawn, and the files written from a Scene."""
