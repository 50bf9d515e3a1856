"""Model families, one package per family, one model per file."""
