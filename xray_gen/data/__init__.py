"""Data: the Study record, the phantom, real-dataset builders, reports, tokeniser, pipeline."""
