"""AliasService: local model aliases in YAML files, and discovery of local GGUF model files.

An alias names a model file in a hub repository together with default request and context
parameters (BodhiApp's data service). Each alias is one YAML file in ``aliases_dir``, read with a
safe loader only (``!!python/object`` and every other non-standard tag is refused with
``aliases.invalid_yaml``, never executed), validated against a strict schema with errors that name
the field, and written atomically (temporary file in the same directory, ``fsync``, ``os.replace``).

Example::

    from maaskit.services.aliases import DefaultAliasService, ModelAlias, RequestParams

    aliases = DefaultAliasService(aliases_dir="~/.config/myapp/aliases")
    await aliases.save(
        ModelAlias(
            alias="tinyllama:chat",
            repo="TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
            filename="tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
            request_params=RequestParams(temperature=0.7),
        )
    )
    print([a.alias for a in await aliases.list()])
    report = await aliases.discover(["~/models"])     # GGUF files: architecture, quantisation, context
    for model in report.models:
        print(model.path, model.architecture, model.quantization, model.context_length)

An alias file looks like::

    alias: tinyllama:chat
    repo: TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF
    filename: tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf
    snapshot: main
    request_params:
      temperature: 0.7
    context_params:
      n_ctx: 4096
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import attrs
import structlog
import yaml

from maaskit.errors import ConflictError, MaasError, NotFoundError, UnavailableError, ValidationError
from maaskit.services.hub import validate_filename, validate_repo_id, validate_revision

__all__ = [
    "MAX_ALIAS_FILE_BYTES",
    "AliasFileError",
    "AliasReport",
    "AliasService",
    "ContextParams",
    "DefaultAliasService",
    "DiscoveryError",
    "DiscoveryReport",
    "LocalModel",
    "ModelAlias",
    "RequestParams",
    "alias_file_name",
    "dump_alias",
    "load_alias",
    "read_gguf",
]

log = structlog.get_logger(__name__)

#: Alias files larger than this are refused before parsing.
MAX_ALIAS_FILE_BYTES: Final = 64 * 1024
_ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}
)
_GGUF_MAGIC = b"GGUF"


# -- value objects -----------------------------------------------------------------------------------


@attrs.frozen
class RequestParams:
    """Default OpenAI request parameters applied to requests for the alias (all optional).

    Attributes:
        temperature: 0 to 2.
        top_p: 0 to 1.
        max_tokens: 1 to 1,048,576.
        frequency_penalty: -2 to 2.
        presence_penalty: -2 to 2.
        seed: any 64-bit integer.
        stop: up to 4 stop strings (each 1 to 256 characters).
        user: end-user id, up to 256 characters.
    """

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    user: str | None = None


@attrs.frozen
class ContextParams:
    """llama.cpp-style context parameters for serving the model (all optional).

    Attributes:
        n_ctx: context window, 1 to 16,777,216 tokens.
        n_parallel: parallel sequences, 1 to 256.
        n_predict: tokens to predict, -1 (unlimited) to 16,777,216.
        n_keep: prompt tokens kept on context shift, 0 to 16,777,216.
        n_threads: 1 to 1,024.
        n_seed: random seed, any 64-bit integer.
    """

    n_ctx: int | None = None
    n_parallel: int | None = None
    n_predict: int | None = None
    n_keep: int | None = None
    n_threads: int | None = None
    n_seed: int | None = None


@attrs.frozen
class ModelAlias:
    """A named model: a file in a hub repository plus default parameters.

    Attributes:
        alias: the name clients use (letters, digits, ``.``, ``_``, ``-``, ``:``; case-insensitive).
        repo: hub repository, ``owner/name``.
        filename: the model file in the repository.
        snapshot: revision (branch, tag or 40-hex commit); default ``main``.
        request_params: default request parameters.
        context_params: context/serving parameters.
    """

    alias: str
    repo: str
    filename: str
    snapshot: str = "main"
    request_params: RequestParams = attrs.field(factory=RequestParams)
    context_params: ContextParams = attrs.field(factory=ContextParams)

    def to_dict(self) -> dict[str, Any]:
        """The alias as plain data (empty parameter sections and unset parameters left out)."""
        data: dict[str, Any] = {
            "alias": self.alias,
            "repo": self.repo,
            "filename": self.filename,
            "snapshot": self.snapshot,
        }
        for name, params in (
            ("request_params", self.request_params),
            ("context_params", self.context_params),
        ):
            values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.asdict(params).items()}
            values = {k: v for k, v in values.items() if v is not None}
            if values:
                data[name] = values
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, file: str = "<data>") -> ModelAlias:
        """Validate *data* against the alias schema; ``ValidationError`` naming the field on failure."""
        return _parse_alias(data, file)


@attrs.frozen
class AliasFileError:
    """An alias file that could not be used.

    Attributes:
        file: the file name in the aliases directory.
        code: the error code (``aliases.invalid_yaml``, ``aliases.unknown_field``...).
        params: the error's parameters.
    """

    file: str
    code: str
    params: dict[str, Any] = attrs.field(factory=dict, eq=False)

    @property
    def message(self) -> str:
        """The English message."""
        from maaskit.i18n import default_localizer

        return default_localizer().render(self.code, self.params)


@attrs.frozen
class AliasReport:
    """Every alias file in the directory: the valid aliases and the broken files."""

    aliases: tuple[ModelAlias, ...]
    errors: tuple[AliasFileError, ...]


@attrs.frozen
class LocalModel:
    """A GGUF model file found by :meth:`AliasService.discover`.

    Attributes:
        path: the file.
        size: bytes.
        gguf_version: the GGUF format version.
        architecture: ``general.architecture`` (``llama``, ``qwen2``...).
        name: ``general.name`` if present.
        file_type: ``general.file_type`` (llama.cpp's ``LlamaFileType`` number) if present.
        quantization: ``Q4_K_M``, ``F16``, ``F32``...: from ``general.file_type``, else the most common
            tensor type.
        context_length: ``<architecture>.context_length`` if present.
        tensor_count: number of tensors.
        metadata_count: number of metadata key/value pairs.
    """

    path: Path
    size: int
    gguf_version: int
    architecture: str | None
    name: str | None
    file_type: int | None
    quantization: str | None
    context_length: int | None
    tensor_count: int
    metadata_count: int


@attrs.frozen
class DiscoveryError:
    """A file or folder discovery could not read.

    Attributes:
        path: what failed.
        code: ``aliases.gguf_bad_magic``, ``aliases.gguf_invalid``, ``aliases.gguf_empty``,
            ``aliases.gguf_unreadable``, ``aliases.gguf_not_a_file`` or ``aliases.folder_missing``.
        params: the error's parameters.
    """

    path: Path
    code: str
    params: dict[str, Any] = attrs.field(factory=dict, eq=False)

    @property
    def message(self) -> str:
        """The English message."""
        from maaskit.i18n import default_localizer

        return default_localizer().render(self.code, self.params)


@attrs.frozen
class DiscoveryReport:
    """The outcome of a scan: models read, and errors (a broken file never stops the scan)."""

    models: tuple[LocalModel, ...]
    errors: tuple[DiscoveryError, ...]


# -- the Protocol ------------------------------------------------------------------------------------


@runtime_checkable
class AliasService(Protocol):
    """Model aliases stored as YAML files, and local GGUF model discovery."""

    async def list(self) -> builtins.list[ModelAlias]:
        """Every valid alias, sorted by name (broken files are skipped and logged; see :meth:`report`)."""
        ...

    async def report(self) -> AliasReport:
        """Every valid alias plus an error for each broken file."""
        ...

    async def get(self, alias: str) -> ModelAlias:
        """The alias (``aliases.not_found`` if missing)."""
        ...

    async def save(self, alias: ModelAlias, *, overwrite: bool = True) -> ModelAlias:
        """Validate and write the alias atomically; ``aliases.exists`` if it exists and not *overwrite*."""
        ...

    async def delete(self, alias: str) -> None:
        """Remove the alias (``aliases.not_found`` if missing)."""
        ...

    async def discover(self, folders: Iterable[str | os.PathLike[str]]) -> DiscoveryReport:
        """Scan *folders* (recursively) for ``*.gguf`` files and read their metadata."""
        ...


# -- YAML and schema ---------------------------------------------------------------------------------


class _StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also refuses duplicate keys (a safe loader: no Python tags)."""


def _construct_mapping(
    loader: _StrictSafeLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "unhashable key", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or type(exc).__name__
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark is not None else ""
    text = f"{problem}{where}"
    return text if len(text) <= 160 else text[:157] + "..."


def load_alias(text: str | bytes, *, file: str = "<text>") -> ModelAlias:
    """Parse one alias document with the safe loader and validate it.

    Raises:
        ValidationError: ``aliases.too_large``, ``aliases.invalid_yaml`` (syntax, Python or other
            unknown tags, duplicate keys), ``aliases.not_a_mapping``, or a schema error naming the field.
    """
    size = len(text.encode() if isinstance(text, str) else text)
    if size > MAX_ALIAS_FILE_BYTES:
        raise ValidationError("aliases.too_large", file=file, max=MAX_ALIAS_FILE_BYTES)
    try:
        data = yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ValidationError("aliases.invalid_yaml", file=file, reason=_yaml_reason(exc)) from None
    except (ValueError, RecursionError) as exc:
        raise ValidationError("aliases.invalid_yaml", file=file, reason=type(exc).__name__) from None
    if not isinstance(data, dict):
        raise ValidationError("aliases.not_a_mapping", file=file)
    return _parse_alias(data, file)


def dump_alias(alias: ModelAlias) -> str:
    """The alias as a YAML document (validated first)."""
    _parse_alias(alias.to_dict(), "<alias>")
    # allow_unicode=False: non-ASCII is escaped, so characters YAML treats as line breaks round-trip
    return yaml.safe_dump(alias.to_dict(), sort_keys=False, allow_unicode=False)


def _check_alias_name(alias: Any) -> str:
    if not isinstance(alias, str):
        raise ValidationError("aliases.invalid_type", field="alias", expected="a string", param="alias")
    if not _ALIAS_RE.match(alias) or "--" in alias or alias.split(".")[0].split(":")[0].lower() in _RESERVED:
        raise ValidationError("aliases.invalid_name", alias=repr(alias)[:140], param="alias")
    return alias


def alias_file_name(alias: str) -> str:
    """The file name an alias is stored under: lower-cased, ``:`` as ``--``, plus ``.yaml``."""
    return _check_alias_name(alias).lower().replace(":", "--") + ".yaml"


_REQUEST_FIELDS: dict[str, tuple[type, float | None, float | None]] = {
    "temperature": (float, 0.0, 2.0),
    "top_p": (float, 0.0, 1.0),
    "max_tokens": (int, 1, 1_048_576),
    "frequency_penalty": (float, -2.0, 2.0),
    "presence_penalty": (float, -2.0, 2.0),
    "seed": (int, -(2**63), 2**63 - 1),
    "stop": (list, None, None),
    "user": (str, None, None),
}
_CONTEXT_FIELDS: dict[str, tuple[type, float | None, float | None]] = {
    "n_ctx": (int, 1, 16_777_216),
    "n_parallel": (int, 1, 256),
    "n_predict": (int, -1, 16_777_216),
    "n_keep": (int, 0, 16_777_216),
    "n_threads": (int, 1, 1024),
    "n_seed": (int, -(2**63), 2**63 - 1),
}
_TOP_FIELDS = ("alias", "repo", "filename", "snapshot", "request_params", "context_params")


def _number(field: str, value: Any, kind: type, low: float | None, high: float | None) -> int | float:
    if isinstance(value, bool):
        raise ValidationError("aliases.invalid_type", field=field, expected=_expected(kind), param=field)
    if kind is int:
        if not isinstance(value, int):
            raise ValidationError("aliases.invalid_type", field=field, expected="an integer", param=field)
        result: int | float = value
    else:
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ValidationError(
                "aliases.invalid_type", field=field, expected="a finite number", param=field
            )
        result = float(value)
    if (low is not None and result < low) or (high is not None and result > high):
        raise ValidationError("aliases.out_of_range", field=field, min=low, max=high, param=field)
    return result


def _expected(kind: type) -> str:
    return {int: "an integer", float: "a finite number", str: "a string", list: "a list of strings"}[kind]


def _section(
    data: Any, section: str, schema: dict[str, tuple[type, float | None, float | None]]
) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValidationError("aliases.invalid_type", field=section, expected="a mapping", param=section)
    out: dict[str, Any] = {}
    for key, value in data.items():
        field = f"{section}.{key}"
        if not isinstance(key, str) or key not in schema:
            raise ValidationError("aliases.unknown_field", field=repr(field)[:140], param=section)
        if value is None:
            continue
        kind, low, high = schema[key]
        if kind is str:
            if not isinstance(value, str) or len(value) > 256:
                raise ValidationError("aliases.invalid_type", field=field, expected="a string", param=field)
            out[key] = value
        elif kind is list:
            items = [value] if isinstance(value, str) else value
            if (
                not isinstance(items, list)
                or len(items) > 4
                or not all(isinstance(s, str) and 0 < len(s) <= 256 for s in items)
            ):
                raise ValidationError(
                    "aliases.invalid_type", field=field, expected="up to 4 non-empty strings", param=field
                )
            out[key] = tuple(items)
        else:
            out[key] = _number(field, value, kind, low, high)
    return out


def _text(data: Mapping[str, Any], field: str, *, required: bool, default: str | None = None) -> str:
    value = data.get(field, default)
    if value is None:
        if required:
            raise ValidationError("aliases.missing_field", field=field, param=field)
        return default or ""
    if not isinstance(value, str):
        raise ValidationError("aliases.invalid_type", field=field, expected="a string", param=field)
    return value


def _parse_alias(data: Mapping[str, Any], file: str) -> ModelAlias:
    for key in data:
        if not isinstance(key, str) or key not in _TOP_FIELDS:
            raise ValidationError("aliases.unknown_field", field=repr(key)[:140], param="alias")
    if data.get("alias") is None:
        raise ValidationError("aliases.missing_field", field="alias", param="alias")
    alias = _check_alias_name(data.get("alias"))
    repo = _text(data, "repo", required=True)
    filename = _text(data, "filename", required=True)
    snapshot = _text(data, "snapshot", required=False, default="main")
    for field, value, check in (
        ("repo", repo, validate_repo_id),
        ("filename", filename, validate_filename),
        ("snapshot", snapshot, validate_revision),
    ):
        try:
            check(value)
        except ValidationError as exc:
            raise ValidationError(
                "aliases.invalid_value", field=field, reason=str(exc.params.get("reason")), param=field
            ) from None
    return ModelAlias(
        alias=alias,
        repo=repo,
        filename=filename,
        snapshot=snapshot,
        request_params=RequestParams(
            **_section(data.get("request_params"), "request_params", _REQUEST_FIELDS)
        ),
        context_params=ContextParams(
            **_section(data.get("context_params"), "context_params", _CONTEXT_FIELDS)
        ),
    )


# -- GGUF --------------------------------------------------------------------------------------------


def _quant_name(file_type: int | None) -> str | None:
    if file_type is None:
        return None
    import gguf

    try:
        name = gguf.LlamaFileType(file_type).name
    except ValueError:
        return None
    for prefix in ("MOSTLY_", "ALL_"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        return field.contents()
    except (ValueError, IndexError, TypeError, UnicodeDecodeError):
        return None


def read_gguf(path: str | os.PathLike[str]) -> LocalModel | DiscoveryError:
    """Read one GGUF file's header and metadata (blocking); a broken file yields a :class:`DiscoveryError`."""
    p = Path(path)
    shown = str(p)
    try:
        info = p.stat()
    except OSError as exc:
        return DiscoveryError(p, "aliases.gguf_unreadable", {"path": shown, "reason": type(exc).__name__})
    if not p.is_file():
        return DiscoveryError(p, "aliases.gguf_not_a_file", {"path": shown})
    if info.st_size == 0:
        return DiscoveryError(p, "aliases.gguf_empty", {"path": shown})
    try:
        with p.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        return DiscoveryError(p, "aliases.gguf_unreadable", {"path": shown, "reason": type(exc).__name__})
    if magic != _GGUF_MAGIC:
        return DiscoveryError(p, "aliases.gguf_bad_magic", {"path": shown})
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - only without the extra
        raise UnavailableError("hub.extra_missing") from exc
    try:
        reader = gguf.GGUFReader(p)
    except OSError as exc:
        return DiscoveryError(p, "aliases.gguf_unreadable", {"path": shown, "reason": type(exc).__name__})
    except Exception as exc:  # a hostile file may break the parser in any way: report, never crash
        reason = f"{type(exc).__name__}: {str(exc)[:120]}"
        return DiscoveryError(p, "aliases.gguf_invalid", {"path": shown, "reason": reason})
    try:
        architecture = _field(reader, "general.architecture")
        architecture = architecture if isinstance(architecture, str) else None
        name = _field(reader, "general.name")
        file_type = _field(reader, "general.file_type")
        file_type = file_type if isinstance(file_type, int) else None
        context = _field(reader, f"{architecture}.context_length") if architecture else None
        version = _field(reader, "GGUF.version")
        quantization = _quant_name(file_type)
        if quantization is None and reader.tensors:
            counts = Counter(t.tensor_type.name for t in reader.tensors)
            quantization = counts.most_common(1)[0][0]
        kv_count = sum(1 for key in reader.fields if not key.startswith("GGUF."))
        return LocalModel(
            path=p,
            size=info.st_size,
            gguf_version=int(version) if isinstance(version, int) else 0,
            architecture=architecture,
            name=name if isinstance(name, str) else None,
            file_type=file_type,
            quantization=quantization,
            context_length=int(context) if isinstance(context, int) else None,
            tensor_count=len(reader.tensors),
            metadata_count=kv_count,
        )
    finally:
        del reader


def _scan(folder_names: builtins.list[str]) -> DiscoveryReport:
    models: list[LocalModel] = []
    errors: list[DiscoveryError] = []
    for folder in (Path(name).expanduser() for name in folder_names):
        if not folder.is_dir():
            errors.append(DiscoveryError(folder, "aliases.folder_missing", {"path": str(folder)}))
            continue
        candidates: list[Path] = []

        def on_error(exc: OSError, folder: Path = folder) -> None:
            where = Path(exc.filename) if exc.filename else folder
            reason = type(exc).__name__
            errors.append(
                DiscoveryError(where, "aliases.gguf_unreadable", {"path": str(where), "reason": reason})
            )

        for root, dirs, files in os.walk(folder, onerror=on_error, followlinks=False):
            dirs.sort()
            for name in sorted(files + [d for d in dirs if d.lower().endswith(".gguf")]):
                if name.lower().endswith(".gguf"):
                    candidates.append(Path(root) / name)
        for path in candidates:
            outcome = read_gguf(path)
            (models if isinstance(outcome, LocalModel) else errors).append(outcome)  # type: ignore[arg-type]
    return DiscoveryReport(tuple(models), tuple(errors))


# -- the service -------------------------------------------------------------------------------------


class DefaultAliasService:
    """:class:`AliasService` over a directory of YAML files (one per alias).

    Args:
        aliases_dir: where alias files live (created on first save).
    """

    def __init__(self, aliases_dir: str | os.PathLike[str]) -> None:
        self._dir = Path(aliases_dir).expanduser()
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"DefaultAliasService(aliases_dir={str(self._dir)!r})"

    @property
    def aliases_dir(self) -> Path:
        """The directory holding the alias files."""
        return self._dir

    # -- blocking helpers (run in a worker thread) ---------------------------------------------------

    def _read_file(self, path: Path) -> ModelAlias:
        try:
            with path.open("rb") as fh:
                raw = fh.read(MAX_ALIAS_FILE_BYTES + 1)
        except OSError as exc:
            raise UnavailableError("aliases.io", operation=f"read: {type(exc).__name__}") from None
        alias = load_alias(raw, file=path.name)
        if alias_file_name(alias.alias) != path.name:
            raise ValidationError("aliases.name_mismatch", file=path.name, alias=alias.alias)
        return alias

    def _report(self) -> AliasReport:
        if not self._dir.is_dir():
            return AliasReport((), ())
        aliases: list[ModelAlias] = []
        errors: list[AliasFileError] = []
        try:
            names = sorted(p.name for p in self._dir.iterdir() if p.name.endswith(".yaml"))
        except OSError as exc:
            raise UnavailableError("aliases.io", operation=f"list: {type(exc).__name__}") from None
        for name in names:
            try:
                aliases.append(self._read_file(self._dir / name))
            except MaasError as exc:
                errors.append(AliasFileError(name, exc.code, dict(exc.params)))
        aliases.sort(key=lambda a: a.alias.lower())
        return AliasReport(tuple(aliases), tuple(errors))

    def _write(self, alias: ModelAlias, overwrite: bool) -> None:
        text = dump_alias(alias).encode()
        target = self._dir / alias_file_name(alias.alias)
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".alias-", suffix=".tmp")
        except OSError as exc:
            raise UnavailableError("aliases.io", operation=f"write: {type(exc).__name__}") from None
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            if overwrite:
                os.replace(tmp, target)
            else:
                try:
                    os.link(tmp, target)  # atomic create-if-absent
                except FileExistsError:
                    raise ConflictError("aliases.exists", alias=alias.alias) from None
            _fsync_dir(self._dir)
        except OSError as exc:
            raise UnavailableError("aliases.io", operation=f"write: {type(exc).__name__}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    # -- API -----------------------------------------------------------------------------------------

    async def list(self) -> builtins.list[ModelAlias]:
        """Every valid alias, sorted by name; broken files are skipped (and logged)."""
        report = await self.report()
        for error in report.errors:
            log.warning("aliases.file_skipped", file=error.file, code=error.code)
        return list(report.aliases)

    async def report(self) -> AliasReport:
        """Every valid alias and one :class:`AliasFileError` per broken file."""
        return await asyncio.to_thread(self._report)

    async def get(self, alias: str) -> ModelAlias:
        """The alias (lookup is case-insensitive); ``aliases.not_found`` if there is none."""
        path = self._dir / alias_file_name(alias)

        def read() -> ModelAlias:
            if not path.is_file():
                raise NotFoundError("aliases.not_found", alias=alias)
            return self._read_file(path)

        return await asyncio.to_thread(read)

    async def save(self, alias: ModelAlias, *, overwrite: bool = True) -> ModelAlias:
        """Validate *alias* and write it atomically (temporary file, fsync, ``os.replace``).

        With ``overwrite=False`` an existing alias is kept and ``aliases.exists`` raised.
        """
        checked = ModelAlias.from_dict(alias.to_dict())
        async with self._lock:
            await asyncio.to_thread(self._write, checked, overwrite)
        return checked

    async def delete(self, alias: str) -> None:
        """Remove the alias file; ``aliases.not_found`` if there is none."""
        path = self._dir / alias_file_name(alias)

        def remove() -> None:
            try:
                path.unlink()
            except FileNotFoundError:
                raise NotFoundError("aliases.not_found", alias=alias) from None
            except OSError as exc:
                raise UnavailableError("aliases.io", operation=f"delete: {type(exc).__name__}") from None

        async with self._lock:
            await asyncio.to_thread(remove)

    async def discover(self, folders: Iterable[str | os.PathLike[str]]) -> DiscoveryReport:
        """Scan *folders* recursively (symlinked folders not followed) for ``*.gguf`` files.

        Each file's header and metadata are read through ``gguf.GGUFReader`` in a worker thread.
        Broken files (empty, wrong magic, truncated, unreadable, a directory named ``x.gguf``) and
        missing folders are reported in :attr:`DiscoveryReport.errors`; the scan goes on.
        """
        paths = [os.fspath(f) for f in folders]
        return await asyncio.to_thread(_scan, paths)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
