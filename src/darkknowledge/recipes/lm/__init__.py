"""Packaged recipes for the language-model reproduction (``dk reproduce lm``)."""
