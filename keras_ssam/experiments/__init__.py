"""The paper's experiments: datasets and input pipelines (`data`), architectures (`models`).

Nothing in the SSAM step imports this package; the CLI and the benchmarks do.
"""
