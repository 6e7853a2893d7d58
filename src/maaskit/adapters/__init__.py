"""Thin framework adapters. Each submodule needs its extra: ``starlette`` / ``fastapi`` / ``flask``.

Nothing here holds business logic: adapters extract credentials, call services, and map
:class:`~maaskit.errors.MaasError` to HTTP responses (:mod:`maaskit.adapters._http`).
"""
