"""Read a bundle (a directory, or the files ``k2trt build`` is about to write), check it for Kubernetes, render and
write ``k8s/manifests.yaml``.

``k2trt build --target k8s`` = ``build_k8s``: the bundle and its manifests are written together, as one directory.
``k2trt k8s render BUNDLE`` = ``render_bundle``: the manifests of an existing bundle, written into it (or
``--out``); its ``--set`` may change ``k8s.*`` only — anything else would make the manifests disagree with the
bundle they run, so it is refused with a pointer to ``k2trt build``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from k2trt.bundle.build import MANIFEST, BuildResult, build_bundle, write_bundle
from k2trt.bundle.recipe import Recipe, load_recipe
from k2trt.errors import ConfigError
from k2trt.fsio import atomic_write, read_mapping
from k2trt.k8s.deployment import BUNDLE_CONFIGS, BundleView, K8sDeployment, deployment, preflight
from k2trt.k8s.manifests import header, manifests, to_yaml
from k2trt.launch.hosts import HostList
from k2trt.launch.spec import LAUNCH_FILE, LaunchSpec
from k2trt.plan.rules import Finding

MANIFESTS_FILE = "k8s/manifests.yaml"
"""Where the manifests go, relative to the bundle."""


@dataclass
class K8sResult:
    """What was (or, with dry_run, would be) written, and the preflight findings."""

    path: Path
    """The manifests file."""
    findings: list[Finding]
    """Preflight: errors (nothing rendered), warnings, notes."""
    text: str = ""
    """The manifests' YAML (empty when preflight found errors)."""
    objects: list[dict[str, Any]] = field(default_factory=list)
    """The objects, in apply order."""
    written: bool = False

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def raise_if_failed(self) -> None:
        """ConfigError with the first error (and how many more) when preflight found any."""
        errs = self.errors
        if errs:
            more = f" (and {len(errs) - 1} more error(s): --dry-run lists them)" if len(errs) > 1 else ""
            raise ConfigError(errs[0].message + more)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "written": self.written, "findings": [f.to_dict() for f in self.findings],
                "objects": [f"{o['kind']}/{o['metadata']['name']}" for o in self.objects]}


def view_of(r: Recipe, files: Mapping[str, str]) -> BundleView:
    """A bundle's view from its files (name → text: ``launch.json``, ``manifest.json`` and the configs) and its
    resolved recipe."""
    launch = LaunchSpec.from_dict(json.loads(files[LAUNCH_FILE])).validate()
    plan = json.loads(files[MANIFEST]).get("plan") or {}
    return BundleView(r, launch, {f: files[f] for f in BUNDLE_CONFIGS if f in files}, plan)


def read_bundle(bundle: Path, sets: Sequence[str] = ()) -> BundleView:
    """The view of the bundle directory ``bundle``, its recipe (from ``manifest.json``) changed by ``sets``
    (``k8s.*`` keys only).

    Raises:
        ConfigError: not a bundle, or a ``--set`` outside ``k8s.``.
    Example:
        >>> read_bundle(Path("bundles/k2"), ["k8s.namespace=serving"]).recipe.k8s.namespace
        'serving'
    """
    for s in sets:
        if not s.partition("=")[0].strip().startswith("k8s."):
            raise ConfigError(f"--set {s}: k8s render changes k8s.* settings only",
                              "rebuild the bundle with k2trt build --target k8s to change anything else")
    hint = "pass a bundle directory written by k2trt build"
    man = read_mapping(bundle / MANIFEST, what="bundle manifest", fmt="json", hint=hint)
    if not isinstance(man.get("recipe"), dict):
        raise ConfigError(f"{bundle / MANIFEST} holds no resolved recipe", "rebuild the bundle with k2trt build")
    r = load_recipe(None, list(sets), data=man["recipe"])
    files = {name: (bundle / name).read_text(encoding="utf-8")
             for name in (LAUNCH_FILE, MANIFEST, *BUNDLE_CONFIGS) if (bundle / name).is_file()}
    if LAUNCH_FILE not in files:
        raise ConfigError(f"{bundle} has no {LAUNCH_FILE}", hint)
    return view_of(r, files)


def render(view: BundleView, path: Path) -> K8sResult:
    """Preflight, then (without errors) the manifests of ``view`` as YAML; writes nothing."""
    findings = preflight(view)
    res = K8sResult(path, findings)
    if res.errors:
        return res
    d: K8sDeployment = deployment(view)
    res.objects = manifests(d)
    res.text = to_yaml(res.objects, header(d, view.recipe.name))
    return res


def render_bundle(bundle: Path, *, sets: Sequence[str] = (), out: Path | None = None,
                  dry_run: bool = False) -> K8sResult:
    """``k2trt k8s render``: the manifests of the bundle directory ``bundle``, written to
    ``BUNDLE/k8s/manifests.yaml`` (or ``out/manifests.yaml``) atomically unless ``dry_run``.

    Raises ConfigError (preflight errors, a bad bundle or ``--set``) unless ``dry_run``, which returns the findings.
    """
    bundle = bundle.resolve()
    path = (out.resolve() / Path(MANIFESTS_FILE).name) if out else bundle / MANIFESTS_FILE
    res = render(read_bundle(bundle, sets), path)
    if dry_run:
        return res
    res.raise_if_failed()
    atomic_write(path, res.text, perm=0o644)
    res.written = True
    return res


def build_k8s(r: Recipe, checkpoint: Path, out: Path, *, hosts: HostList | Sequence[str] | None = None,
              dry_run: bool = False, force: bool = False) -> tuple[BuildResult, K8sResult]:
    """``k2trt build --target k8s``: the bundle and its ``k8s/manifests.yaml``, written together atomically.

    Raises what ``build_bundle`` raises, and ConfigError on Kubernetes preflight errors (nothing is written);
    ``dry_run`` returns both results with the findings instead.
    """
    res = build_bundle(r, checkpoint, out, hosts=hosts, dry_run=True)
    k = render(view_of(r, res.files), res.out / MANIFESTS_FILE)
    if dry_run:
        return res, k
    k.raise_if_failed()
    res.files[MANIFESTS_FILE] = k.text
    write_bundle(res.out, res.files, force)
    res.written = k.written = True
    return res, k
