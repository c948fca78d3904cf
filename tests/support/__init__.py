"""Helpers the tests share, as a package the test modules import (never `conftest`, and never
another test module): project copies, the tiny ML config, the toy DVC project for the
plumbing, the Prefect server, S3 (moto), artifacts and processes. Benchmarks may import
them too; nothing here imports a test or a benchmark."""
