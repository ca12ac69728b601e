"""Kubernetes: LeaderWorkerSet manifests rendered from a bundle (``k2trt build --target k8s``, ``k2trt k8s render``).

A bundle already says what every rank runs (``launch.json``), with which engine config (``config.yml`` …) and what
the plan expects (``manifest.json``); this package only places that on Kubernetes, so there is no second source of
truth. One engine instance is one LeaderWorkerSet group: the leader pod runs the bundle's ``mpirun`` command
(``k2trt.launch.mpi.mpirun_argv``, the function ``k2trt serve`` uses) with the group's pods as hosts, the worker
pods run sshd. Cluster choices (namespace, storage, node selector, image, ...) come from the recipe's ``k8s:``
section (``k2trt.bundle.recipe.K8sSection``).

Modules: ``deployment`` (a bundle → the typed deployment, and the preflight that can be known ahead),
``manifests`` (the Kubernetes objects), ``render`` (read a bundle or a build, write ``k8s/manifests.yaml``).

Imports the bundle, launch, plan and trtllm layers; nothing imports this package but the commands. No torch, no
Kubernetes client: the objects are plain dicts, validated in tests against the API schemas.
"""
