"""Helpers for the command-line tools: loading yaml/LazyConfig files, prediction, drawing."""
