{{/*
Chart name, overridable with .Values.nameOverride. Kubernetes names are limited to 63 characters.
*/}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the prefix of every object. Reuses the release name when it already contains the chart
name (release "kubetune" gives "kubetune", not "kubetune-kubetune").
*/}}
{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "kubetune.labels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: stable across upgrades (a Deployment's selector is immutable). Objects add
`app.kubernetes.io/component` (operator, trainer) themselves.
*/}}
{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
"repository:tag" of an image block ({repository, tag}); an empty tag means the chart's appVersion.
Call with (list $ .Values.x.image).
*/}}
{{- define "kubetune.image" -}}
{{- $root := index . 0 }}
{{- $image := index . 1 }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}

{{/*
Namespaces that get the trainer ServiceAccount and RoleBinding: trainer.namespaces plus
watchNamespace when set, without duplicates. Rendered as a YAML list.
*/}}
{{- define "kubetune.trainerNamespaces" -}}
{{- $namespaces := .Values.trainer.namespaces }}
{{- if .Values.watchNamespace }}
{{- $namespaces = append $namespaces .Values.watchNamespace }}
{{- end }}
{{- toYaml (uniq $namespaces) }}
{{- end }}

{{/*
Operator rules on namespaced resources: a ClusterRole when watching all namespaces, a Role in
watchNamespace otherwise. Exactly the calls the operator makes (operator/kubetune_operator/kube.py)
plus what Kopf does on the watched resources (patch for its finalizer and progress annotations).
*/}}
{{- define "kubetune.operatorNamespacedRules" -}}
- apiGroups: [kubetune.io]
  resources: [finetunejobs, modeldeployments]
  verbs: [get, list, watch, patch]
- apiGroups: [kubetune.io]
  resources: [finetunejobs/status, modeldeployments/status]
  verbs: [get, patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, get, list, watch, patch, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, get]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [services]
  verbs: [create, list, patch]  # server-side apply (create: when it creates); list: observed per reconcile
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [create, list, patch, delete]  # server-side apply and scaling; list: observed per reconcile
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [create, get, patch]
# Multi-node runs on JobSet or Kubeflow Trainer: create a run's object, read it back on a timer (its
# state is the FineTuneJob's; not watched), patch spec.suspend, delete it when the spec changes under it.
# The CRDs need not be installed: the operator reads them first.
- apiGroups: [jobset.x-k8s.io]
  resources: [jobsets]
  verbs: [create, get, patch, delete]
- apiGroups: [trainer.kubeflow.org]
  resources: [trainjobs]
  verbs: [create, get, patch, delete]
{{- end }}

{{/*
Cluster-scoped reads Kopf needs in every mode: resource discovery (CRDs) and namespace observation.
*/}}
{{- define "kubetune.operatorClusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
{{- end }}

{{/*
Admission policy variables: may the requester `get` each object named in variables.<list> (new
Secret or ConfigMap references)? The apiserver limits one CEL expression to two authorizer checks
(each costs 350000 of the 1000000 a call may use), so the names are checked two per variable, the
first four by name; `<list>AllReadable` is `get` on every object of that resource in the namespace.
Call with (dict "list" "newSecrets" "resource" "secrets").
*/}}
{{- define "kubetune.admissionNamedChecks" -}}
{{- $get := printf "authorizer.group('').resource('%s').namespace(request.namespace)" .resource }}
{{- range $first := list 0 2 }}
- name: {{ $.list }}Readable{{ $first }}
  expression: >-
    variables.{{ $.list }}.size() <= {{ $first }}
    || ({{ $get }}.name(variables.{{ $.list }}[{{ $first }}]).check('get').allowed()
        && (variables.{{ $.list }}.size() <= {{ add1 $first }}
            || {{ $get }}.name(variables.{{ $.list }}[{{ add1 $first }}]).check('get').allowed()))
{{- end }}
- name: {{ .list }}AllReadable
  expression: "{{ $get }}.check('get').allowed()"
{{- end }}
