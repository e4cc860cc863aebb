"""Name -> class registries: priors, likelihoods, inference methods, networks, objectives and
named datasets.

A new entry is one new module in the registry's package that decorates its class with
``@PRIORS.register("name", options={...})``; nothing else is edited. The registry is read
lazily: ``names()`` and ``options()`` parse the package's source files (``ast``, no import,
so ``vaekit train --help`` lists every entry without loading torch), and ``get(name)``
imports the package's modules on first use. A test checks that what the parser reads equals
what the imports register.

No torch import here, and no import of ``vaekit.config``: the config reads the registries.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")

# Importance samples per row of a log p(x) estimate or of the IWAE objective, at most: a hundred
# times the literature's 5000. A larger K passes the decoder so often per row that an estimate
# would not finish (each row's K draws go through in chunks, so memory never refuses it).
K_MAX = 500_000
# Optimisation steps per point (refinement, per-point q, the gaps' q*), at most: fifty times the
# gaps' 2000, where a per-point optimum has long stopped moving; more would run without end.
STEPS_MAX = 100_000


@dataclass(frozen=True)
class Option:
    """One hyperparameter, declared once: the CLI flag, the estimator's parameter, the
    config.json field and the check on resume are all derived from it.

    ``type`` is ``int``, ``float``, ``str``, ``bool``, ``"widths"`` (a tuple of positive
    integers), ``"int|widths"`` (a positive int, or such a tuple), ``"floats"`` (a tuple of
    finite numbers, each bounded by ``minimum``) or ``"names"`` (a tuple of strings). ``choices`` is a tuple, or the
    name of a registry (``"prior"``) whose entries are the choices. ``minimum`` and
    ``exclusive`` bound numbers; ``optional`` admits None.
    """

    default: Any
    help: str
    type: Any = None
    choices: Any = None
    minimum: float | None = None
    exclusive: bool = False
    maximum: float | None = None
    optional: bool = False
    # Values accepted besides the choices (an "auto" resolved later).
    also: tuple = ()
    # May change when a run is resumed (epochs, device, speed settings).
    resumable: bool = False

    def check(self, name: str, value: Any) -> Any:
        """``value`` checked and normalised (lists become tuples); ConfigError naming ``name``."""
        if value is None:
            if self.optional:
                return None
            raise ConfigError(f"{name} must be set, got None")
        kind = self.kind
        if kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, got {value!r}")
            return value
        if kind in ("widths", "int|widths"):
            if kind == "int|widths" and _is_int(value) and value >= 1:
                return int(value)
            if _is_int(value) and value >= 1:  # one hidden layer, as scikit-learn's hidden_layer_sizes=100
                return (int(value),)
            if isinstance(value, (list, tuple)) and all(_is_int(v) and v >= 1 for v in value):
                if kind == "int|widths" and not value:
                    raise ConfigError(f"{name} must name at least one size, got {value!r}")
                return tuple(int(v) for v in value)
            raise ConfigError(f"{name} must be a list of integers >= 1, got {value!r}")
        if kind == "names":
            if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name} must be a non-empty list of strings, got {value!r}")
            return tuple(value)
        if kind == "floats":
            import math

            if not isinstance(value, (list, tuple)) or not value or not all(
                _is_real(v) and math.isfinite(v) for v in value
            ):
                raise ConfigError(f"{name} must be a non-empty list of finite numbers, got {value!r}")
            bad = [v for v in value if self.minimum is not None and (v <= self.minimum if self.exclusive else v < self.minimum)]
            if bad:
                raise ConfigError(f"{name} must be {'>' if self.exclusive else '>='} {self.minimum:g} in every entry, got {bad[0]!r}")
            return tuple(float(v) for v in value)
        if kind == "int":
            if not _is_int(value) or (self.minimum is not None and value < self.minimum):
                bound = "" if self.minimum is None else f" >= {self.minimum:g}"
                raise ConfigError(f"{name} must be an integer{bound}, got {value!r}")
            value = int(value)
        elif kind == "float":
            import math

            if not _is_real(value) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            value = float(value)
        elif kind == "str":
            if not isinstance(value, str):
                raise ConfigError(f"{name} must be a string, got {value!r}")
        if self.minimum is not None and (value <= self.minimum if self.exclusive else value < self.minimum):
            raise ConfigError(f"{name} must be {'>' if self.exclusive else '>='} {_bound(self.minimum)}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{name} must be <= {_bound(self.maximum)}, got {value!r}")
        choices = self.choice_names()
        if choices is not None and value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value

    @property
    def kind(self) -> str:
        t = self.type if self.type is not None else type(self.default)
        return t if isinstance(t, str) else t.__name__

    def choice_names(self) -> tuple | None:
        if isinstance(self.choices, str):
            return self.also + tuple(REGISTRIES[self.choices].names())
        return None if self.choices is None else self.also + tuple(self.choices)


def _is_real(v: Any) -> bool:
    """A real number that is not a bool: Python's, or numpy's (np.float32, np.int64)."""
    import numbers

    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    import numbers

    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


class Registry(Generic[T]):
    """Entries of one kind, registered by the modules of ``package``."""

    def __init__(self, kind: str, package: str):
        self.kind, self.package = kind, package
        self._entries: dict[str, type[T]] = {}
        self._loaded = False
        self._scanned: dict[str, dict[str, Option]] | None = None
        # Entries registered from outside the package (a user's script): this process only.
        self._outside: dict[str, type[T]] = {}

    def register(self, name: str, options: dict[str, Option] | None = None) -> Callable[[type[T]], type[T]]:
        """Add a class under ``name``. From a module of the registry's package (the way vaekit's
        own entries and a new file there register), or from the user's code: such an entry is a
        choice of this process's models and estimators (the CLI, another process, sees only the
        package's files), may not take a package entry's name, and declares no options (those
        are fields of the saved config, read from the package's files)."""

        def add(cls: type[T]) -> type[T]:
            own = cls.__module__ == self.package or cls.__module__.startswith(self.package + ".")
            if not isinstance(name, str) or not name:
                raise ConfigError(f"a {self.kind} is registered under a non-empty name, got {name!r}")
            if name in self._entries or (not own and name in self._scan()):
                taken = "vaekit's own" if name in self._scan() else "registered already"
                raise ConfigError(f"{self.kind} {name!r} is {taken}; register {cls.__name__} under another name")
            if not own and options:
                raise ConfigError(
                    f"{self.kind} {name!r}: options are declared only by entries in vaekit's {self.package} folder "
                    f"(they become fields of the saved config); register {cls.__name__} without options"
                )
            cls.name = name  # type: ignore[attr-defined]
            cls.options = dict(options or {})  # type: ignore[attr-defined]
            self._entries[name] = cls
            if not own:
                self._outside[name] = cls
            return cls

        return add

    def get(self, name: str) -> type[T]:
        self._load()
        if not isinstance(name, str):  # a list or dict would not even hash
            raise ConfigError(f"{self.kind} must be a name, one of: {', '.join(self.names())}; got {name!r}")
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted({*self._scan(), *self._outside})

    def options(self, name: str) -> dict[str, Option]:
        """The options that entry ``name`` owns, read from its source (no import)."""
        scanned = self._scan()
        if name in self._outside:
            return {}
        if name not in scanned:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return scanned[name]

    def __contains__(self, name: object) -> bool:
        return name in self._scan() or name in self._outside

    def _load(self) -> None:
        if self._loaded:
            return
        importlib.import_module(self.package)
        for path in self._files():
            if path.stem != "__init__":
                importlib.import_module(f"{self.package}.{path.stem}")
        self._loaded = True

    def loaded(self) -> dict[str, type[T]]:
        """Every entry, imported (for tests and tools that need the classes)."""
        self._load()
        return dict(self._entries)

    def _files(self) -> list[Path]:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"registry package {self.package} not found")
        return sorted(p for loc in spec.submodule_search_locations for p in Path(loc).glob("*.py"))

    def _scan(self) -> dict[str, dict[str, Option]]:
        if self._scanned is None:
            found: dict[str, dict[str, Option]] = {}
            for path in self._files():
                for name, options in _registrations(path):
                    found[name] = options
            self._scanned = found
        return self._scanned


def _registrations(path: Path):
    """(name, options) of every ``@X.register("name", options={...})`` decorator in a file."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        for dec in node.decorator_list:
            if (
                isinstance(dec, ast.Call)
                and isinstance(dec.func, ast.Attribute)
                and dec.func.attr == "register"
                and dec.args
                and isinstance(dec.args[0], ast.Constant)
                and isinstance(dec.args[0].value, str)
            ):
                options: dict[str, Option] = {}
                for kw in dec.keywords:
                    if kw.arg == "options":
                        # Only Option(...) calls of literals and this module's bounds:
                        # evaluated with nothing else in scope.
                        code = compile(ast.Expression(kw.value), str(path), "eval")
                        scope = {"Option": Option, "K_MAX": K_MAX, "STEPS_MAX": STEPS_MAX, "int": int, "float": float, "str": str, "bool": bool}
                        options = eval(code, {"__builtins__": {}, **scope})
                yield dec.args[0].value, options


PRIORS: Registry = Registry("prior", "vaekit.priors")
LIKELIHOODS: Registry = Registry("likelihood", "vaekit.likelihoods")
INFERENCE: Registry = Registry("inference method", "vaekit.inference")
NETS: Registry = Registry("network", "vaekit.nets")
OBJECTIVES: Registry = Registry("objective", "vaekit.objectives")
DATASETS: Registry = Registry("dataset", "vaekit.data.named")

REGISTRIES: dict[str, Registry] = {
    "prior": PRIORS,
    "likelihood": LIKELIHOODS,
    "inference": INFERENCE,
    "net": NETS,
    "objective": OBJECTIVES,
    "dataset": DATASETS,
}


def _bound(value: float) -> str:
    """A bound as an error shows it: an integer bound whole (2**63 - 1, not 9.22337e+18)."""
    return str(value) if isinstance(value, int) else f"{value:g}"
