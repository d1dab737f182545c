"""Tools for testing headwater graphs and plugins.

Nothing is imported here, so ``import headwater.testing`` needs neither pytest nor
hypothesis; import the submodule you use:

* :mod:`headwater.testing.strategies` — hypothesis strategies: ``graphs()``,
  ``malformed_graphs()``, ``states_for(schema)``, ``inputs_for(app)`` (needs hypothesis).
* :mod:`headwater.testing.conformance` — conformance suites for checkpointers and
  brokers, for backends' own tests.
* :mod:`headwater.testing.fake` — a scripted fake chat model.
* :mod:`headwater.testing.pytest_plugin` — the fixtures of headwater's pytest plugin.

Example::

    from headwater.testing.strategies import inputs_for

    @given(inputs_for(app))
    def test_any_input(state):
        app.invoke(state)
"""

from __future__ import annotations
