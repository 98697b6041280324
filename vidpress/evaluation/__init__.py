"""Measuring what a press costs and keeps."""
