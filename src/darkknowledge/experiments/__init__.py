"""Paper reproductions, one module per experiment family (``dk reproduce NAME``)."""
