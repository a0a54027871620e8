"""Inputs: image files -> network inputs, and the image pairs the network sees."""
