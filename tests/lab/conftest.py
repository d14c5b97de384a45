from tests.lab.fixtures import lab3

__all__ = ["lab3"]
