"""Pure library: preprocessing, inference, alignment, post-processing, visualisation, export.

No gradio, no globals, no downloads, no print: arrays in, arrays or dataclasses out.
"""
