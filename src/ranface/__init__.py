"""ranface: low-resolution (surveillance) face recognition with the Resolution Adaption
Network of Fang et al., ECCV 2020 ("Generate to Adapt")."""

__version__ = "0.1.0"

__all__ = ["__version__"]
