"""Conventions shared by every package, each defined once: category paths, atomic writes,
brute-force top-k, L2 normalisation and fusion, limits. numpy and the standard library only, so
`embedder`, `index`, `train` and `api` may all import it (it imports none of them)."""
