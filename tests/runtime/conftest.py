"""The two-node lab fixtures of tests/e2e, for the runtime's scenarios."""

from tests.e2e.conftest import _remove_stale_nodelabs, make_nodelab

__all__ = ["_remove_stale_nodelabs", "make_nodelab"]
