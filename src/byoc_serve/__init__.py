"""byoc-serve: a SageMaker bring-your-own-container serving runtime."""

__version__ = "0.1.0"
