"""Names of the Kubetune API and of the labels it puts on what it creates."""

from __future__ import annotations

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
FINETUNEJOBS = "finetunejobs"
MODELDEPLOYMENTS = "modeldeployments"

MANAGED_BY = "kubetune"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_FINETUNEJOB = f"{GROUP}/finetunejob"
LABEL_RUN = f"{GROUP}/run"

SPEC_MOUNT_DIR = "/etc/kubetune"
SPEC_FILE = "finetunejob.yaml"
