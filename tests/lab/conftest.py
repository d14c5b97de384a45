from tests.lab.fixtures import lab3
from tests.lab.region import lab_region

__all__ = ["lab3", "lab_region"]
