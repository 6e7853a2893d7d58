"""Property tests: Registry.problems() on random dependency graphs matches a reference
computation, and every service of a problem-free graph resolves, wired correctly."""

import inspect
import itertools
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from maaskit.registry import Lifetime, ProblemKind, Registry

Edge = tuple[int, bool]  # (target node, parameter has a default)


class Graph:
    """A random graph: node classes whose ``__init__`` annotations point at other nodes."""

    def __init__(self, registered: list[bool], request: list[bool], edges: list[list[Edge]]) -> None:
        self.n = len(registered)
        self.registered = registered
        self.request = request
        self.edges = edges
        self.classes: list[type[Any]] = [type(f"N{i}", (), {}) for i in range(self.n)]
        for i, cls in enumerate(self.classes):
            cls.__init__ = self._init(i)

    def _init(self, i: int) -> Any:
        def __init__(self: Any, **deps: Any) -> None:
            self.deps = deps

        params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        for k, (target, has_default) in enumerate(self.edges[i]):
            annotation = self.classes[target]
            default = None if has_default else inspect.Parameter.empty
            params.append(
                inspect.Parameter(
                    f"p{k}", inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
                )
            )
            __init__.__annotations__[f"p{k}"] = annotation
        __init__.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return __init__

    def __repr__(self) -> str:
        return f"Graph(registered={self.registered}, request={self.request}, edges={self.edges})"

    def registry(self) -> Registry:
        registry = Registry()
        for i, cls in enumerate(self.classes):
            if self.registered[i]:
                lifetime = Lifetime.REQUEST if self.request[i] else Lifetime.APP
                registry.register_class(cls, lifetime=lifetime)
        return registry

    # ---- reference computations, independent of the registry's own algorithms

    def wired_edges(self) -> dict[int, set[int]]:
        return {
            i: {t for t, _ in self.edges[i] if self.registered[t]}
            for i in range(self.n)
            if self.registered[i]
        }

    def missing(self) -> set[int]:
        return {
            t
            for i in range(self.n)
            if self.registered[i]
            for t, has_default in self.edges[i]
            if not self.registered[t] and not has_default
        }

    def scope_violations(self) -> set[tuple[int, int]]:
        return {
            (i, t)
            for i, targets in self.wired_edges().items()
            for t in targets
            if not self.request[i] and self.request[t]
        }

    def cyclic_components(self) -> set[frozenset[int]]:
        edges = self.wired_edges()
        reach = {i: set(targets) for i, targets in edges.items()}
        changed = True
        while changed:  # transitive closure
            changed = False
            for i in reach:
                extra = set().union(*(reach[j] for j in reach[i])) - reach[i]
                if extra:
                    reach[i] |= extra
                    changed = True
        components = set()
        for i in edges:
            if i in reach[i]:  # on a cycle
                components.add(frozenset(j for j in edges if j in reach[i] and i in reach[j]))
        return components


@st.composite
def graphs(draw: st.DrawFn, dag: bool = False) -> Graph:
    n = draw(st.integers(min_value=1, max_value=8))
    registered = [True] * n if dag else draw(st.lists(st.booleans(), min_size=n, max_size=n))
    request = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    edges: list[list[Edge]] = []
    for i in range(n):
        if dag:
            if i == n - 1:
                edges.append([])
                continue
            targets = st.integers(min_value=i + 1, max_value=n - 1)
        else:
            targets = st.integers(min_value=0, max_value=n - 1)
        edges.append(draw(st.lists(st.tuples(targets, st.booleans()), max_size=3)))
    if dag:
        # a request-lifetime node may depend on anything; an app node only on app nodes
        for i in range(n - 1, -1, -1):
            if not request[i] and any(request[t] for t, _ in edges[i]):
                request[i] = True
    return Graph(registered, request, edges)


def check_resolution(graph: Graph, registry: Registry) -> None:
    container = registry.container()
    instances: dict[int, Any] = {}
    for i, cls in enumerate(graph.classes):
        if graph.registered[i]:
            instances[i] = container.get(cls) if graph.request[i] else registry.get(cls)
            assert isinstance(instances[i], cls)
    for i, instance in instances.items():
        expected = {f"p{k}": instances[t] for k, (t, _) in enumerate(graph.edges[i]) if graph.registered[t]}
        assert instance.deps.keys() == expected.keys()
        for name, dep in expected.items():
            assert instance.deps[name] is dep
        assert container.get(graph.classes[i]) is instance
    container.close()


@settings(max_examples=300, deadline=None)
@given(graphs())
def test_problems_match_the_reference(graph: Graph) -> None:
    registry = graph.registry()
    problems = registry.problems()
    index = {cls: i for i, cls in enumerate(graph.classes)}
    edges = graph.wired_edges()

    missing = [p for p in problems if p.kind is ProblemKind.MISSING]
    cycles = [p for p in problems if p.kind is ProblemKind.CYCLE]
    scope = [p for p in problems if p.kind is ProblemKind.SCOPE_VIOLATION]
    assert len(missing) + len(cycles) + len(scope) == len(problems)

    # every missing registration, once, each with a real path to it
    assert {index[p.service] for p in missing} == graph.missing()
    assert len(missing) == len(graph.missing())
    for p in missing:
        path = [index[c] for c in p.path]
        assert path[-1] == index[p.service]
        assert all(graph.registered[i] for i in path[:-1])
        for a, b in itertools.pairwise(path[:-1]):
            assert b in edges[a]
        assert any(t == path[-1] and not d for t, d in graph.edges[path[-2]])
        assert p.chain == " -> ".join(f"N{i}" for i in path)

    # exactly one real cycle per cyclic strongly connected component
    expected_components = graph.cyclic_components()
    found_components = set()
    for p in cycles:
        path = [index[c] for c in p.path]
        assert path[0] == path[-1]
        assert len(set(path[:-1])) == len(path) - 1  # elementary
        for a, b in itertools.pairwise(path):
            assert b in edges[a]
        component = next(c for c in expected_components if path[0] in c)
        assert set(path) <= component
        found_components.add(component)
        assert p.chain == " -> ".join(f"N{i}" for i in path)
    assert found_components == expected_components
    assert len(cycles) == len(expected_components)

    # every app -> request edge
    assert {(index[p.path[0]], index[p.path[1]]) for p in scope} == graph.scope_violations()
    assert len(scope) == len(graph.scope_violations())

    event("problems" if problems else "no problems")
    event(f"cycles: {len(cycles)}")
    if not problems:
        registry.validate()
        check_resolution(graph, registry)


@settings(max_examples=200, deadline=None)
@given(graphs(dag=True))
def test_problem_free_graphs_resolve(graph: Graph) -> None:
    registry = graph.registry()
    assert registry.problems() == []
    check_resolution(graph, registry)
    registry.close()
