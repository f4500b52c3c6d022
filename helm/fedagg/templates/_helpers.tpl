{{/* vim: set filetype=mustache: */}}

{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "fedagg.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name when it already contains the chart name.
Truncated to 52 characters so that suffixes ("-tls", "-config", "-test-health") stay within 63.
*/}}
{{- define "fedagg.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart label value: <name>-<version>. */}}
{{- define "fedagg.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every resource carries. */}}
{{- define "fedagg.labels" -}}
helm.sh/chart: {{ include "fedagg.chart" . }}
{{ include "fedagg.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fedagg
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of the aggregator pod (stable across upgrades). */}}
{{- define "fedagg.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fedagg.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: aggregator
{{- end }}

{{/* The ServiceAccount the pod runs as. */}}
{{- define "fedagg.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fedagg.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: [registry/]repository:tag or [registry/]repository@digest. The registry is
global.imageRegistry (an umbrella chart's mirror, for every subchart), else image.registry, else none (the
repository names its own).
*/}}
{{- define "fedagg.image" -}}
{{- $registry := (.Values.global).imageRegistry | default .Values.image.registry }}
{{- $repository := .Values.image.repository }}
{{- if $registry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" $registry) $repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The namespace of every namespaced resource: namespaceOverride, else the release's. */}}
{{- define "fedagg.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 }}
{{- end }}

{{/*
An `annotations:` block (nothing when empty): commonAnnotations merged under the resource's own, which win.
Called with (list $ <the resource's annotations>...).
*/}}
{{- define "fedagg.annotations" -}}
{{- $merged := dict }}
{{- range rest . }}
{{- $merged = merge $merged (. | default dict) }}
{{- end }}
{{- $merged = merge $merged ((index . 0).Values.commonAnnotations | default dict) }}
{{- with $merged }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The state volume's storage class: global.storageClass, else persistence.storageClassName; "-" is "" (no
dynamic provisioning); none (null) leaves the cluster's default class. */}}
{{- define "fedagg.storageClass" -}}
{{- $class := (.Values.global).storageClass | default .Values.persistence.storageClassName }}
{{- if not (kindIs "invalid" $class) }}
{{- if eq (toString $class) "-" }}{{ "" | quote }}{{- else }}{{ $class | quote }}{{- end }}
{{- end }}
{{- end }}

{{/* Whether the Kubernetes shutdown hook may run (and so needs RBAC and a service account token). */}}
{{- define "fedagg.kubeHook" -}}
{{- if ne (toString .Values.config.hooks.kubernetes.enabled) "false" }}true{{- end }}
{{- end }}

{{/* Whether certificates are mounted (any TLS mode but insecure). */}}
{{- define "fedagg.tlsEnabled" -}}
{{- if ne .Values.config.server.tls.mode "insecure" }}true{{- end }}
{{- end }}

{{/* Name of the kubernetes.io/tls secret holding tls.crt, tls.key and ca.crt. */}}
{{- define "fedagg.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "fedagg.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{/* Name of the state PersistentVolumeClaim. */}}
{{- define "fedagg.claimName" -}}
{{- default (printf "%s-state" (include "fedagg.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* In-cluster DNS name of the federation Service. */}}
{{- define "fedagg.serviceHost" -}}
{{- printf "%s.%s.svc" (include "fedagg.fullname" .) (include "fedagg.namespace" .) }}
{{- end }}

{{/* The ClusterIP Service of the ops and metrics ports, and its in-cluster DNS name. */}}
{{- define "fedagg.opsServiceName" -}}
{{- printf "%s-ops" (include "fedagg.fullname" .) }}
{{- end }}
{{- define "fedagg.opsServiceHost" -}}
{{- printf "%s.%s.svc" (include "fedagg.opsServiceName" .) (include "fedagg.namespace" .) }}
{{- end }}

{{/*
The Job's name: <fullname>, or with job.nameWithChecksum <fullname>-<10 hex digits of the pod template's hash>,
so that any change of the (immutable) pod template makes a new Job instead of a failing patch. 52 + 1 + 10 = 63,
the limit of the job-name label Kubernetes puts on its pods.
*/}}
{{- define "fedagg.jobName" -}}
{{- if .Values.job.nameWithChecksum }}
{{- printf "%s-%s" (include "fedagg.fullname" .) (include "fedagg.podTemplate" . | sha256sum | trunc 10) }}
{{- else }}
{{- include "fedagg.fullname" . }}
{{- end }}
{{- end }}

{{/* The workload's name (Job or Deployment). */}}
{{- define "fedagg.workloadName" -}}
{{- if eq .Values.workload "Job" }}
{{- include "fedagg.jobName" . }}
{{- else }}
{{- include "fedagg.fullname" . }}
{{- end }}
{{- end }}

{{/*
Paths inside the container. Every volume is mounted as a whole directory (no subPath anywhere), so that a
rotated certificate reaches the pod; the config therefore lives in /etc/fedagg/config/ (the image's default
command reads /etc/fedagg/fedagg.yaml; the chart passes --config explicitly).
*/}}
{{- define "fedagg.configDir" -}}/etc/fedagg/config{{- end }}
{{- define "fedagg.tlsDir" -}}/etc/fedagg/tls{{- end }}
{{- define "fedagg.openflDir" -}}/etc/fedagg/openfl{{- end }}
{{- define "fedagg.modelDir" -}}/etc/fedagg/model{{- end }}
{{- define "fedagg.stateDir" -}}/var/lib/fedagg{{- end }}

{{/*
What fedagg does after the experiment: a Job exits (and completes), unless results.keepServing keeps it up
read-only until its pod is deleted; a Deployment stays up read-only.
*/}}
{{- define "fedagg.afterFinish" -}}
{{- if or (eq .Values.workload "Deployment") .Values.results.keepServing }}stay{{- else }}exit{{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds: larger than fedagg's own shutdown budget (ops.grace_seconds). */}}
{{- define "fedagg.terminationGracePeriodSeconds" -}}
{{- $grace := .Values.config.ops.grace_seconds | float64 }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (ceil $grace | int) 5 }}
{{- else }}
{{- if le (.Values.terminationGracePeriodSeconds | float64) $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be larger than config.ops.grace_seconds (%v): the kubelet would kill fedagg in the middle of its shutdown" .Values.terminationGracePeriodSeconds .Values.config.ops.grace_seconds) }}
{{- end }}
{{- .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
The fedagg configuration file: config.* from the values plus the keys the chart owns (ports, addresses,
certificate directory, state directory, after_finish), so that probes, Service and config always agree.
*/}}
{{- define "fedagg.config" -}}
{{- $config := deepCopy .Values.config }}
{{- /* With an OpenFL plan, the plan supplies the federation; only the initial model's path is given here. */}}
{{- $federation := $config.federation }}
{{- $uuid := $federation.federation_uuid }}
{{- if or (kindIs "int64" $uuid) (kindIs "float64" $uuid) }}
{{- fail (printf "config.federation.federation_uuid: got the number %v, expected a string: quote it in a values file (federation_uuid: \"%v\"), or set it with --set-string config.federation.federation_uuid=%v (--set reads digits as a number)" $uuid $uuid $uuid) }}
{{- end }}
{{- if .Values.initialModel.existingConfigMap }}
{{- $_ := set $federation "initial_model" (printf "%s/%s" (include "fedagg.modelDir" .) .Values.initialModel.key) }}
{{- else if .Values.initialModel.path }}
{{- $_ := set $federation "initial_model" .Values.initialModel.path }}
{{- end }}
{{- if not $federation }}
{{- $_ := unset $config "federation" }}
{{- end }}
{{- $server := $config.server }}
{{- /*
The tier's root opens no federation port: its one server is on topology.tier_port and presents the tier's
certificates, which its server.tls names too (what `fedagg config check` reports).
*/}}
{{- $root := eq (toString .role) "root" }}
{{- if not $root }}
{{- $_ := set $server "bind_address" "[::]" }}
{{- $_ := set $server "port" (.Values.containerPorts.federation | int) }}
{{- end }}
{{- if include "fedagg.tlsEnabled" . }}
{{- $tls := $server.tls }}
{{- $_ := set $tls "certificate_dir" (ternary (include "fedagg.tierDir" .) (include "fedagg.tlsDir" .) $root) }}
{{- $_ := set $tls "certificate" "tls.crt" }}
{{- $_ := set $tls "private_key" "tls.key" }}
{{- $_ := set $tls "root_certificate" "ca.crt" }}
{{- end }}
{{- $ops := $config.ops }}
{{- $_ := set $ops "bind_address" "[::]" }}
{{- $_ := set $ops "port" (.Values.containerPorts.ops | int) }}
{{- $_ := set $ops "metrics_bind_address" "[::]" }}
{{- $_ := set $ops "metrics_port" (.Values.containerPorts.metrics | int) }}
{{- $_ := set $ops "after_finish" (include "fedagg.afterFinish" .) }}
{{- $kubeHook := $config.hooks.kubernetes }}
{{- $_ := set $kubeHook "enabled" (toString $kubeHook.enabled) }}
{{- $storage := $config.storage }}
{{- $_ := set $storage "state_dir" (include "fedagg.stateDir" .) }}
{{- /* The leader election; ha.identity is the pod's name, from the environment (FEDAGG__HA__IDENTITY). */}}
{{- if include "fedagg.ha" . }}
{{- $ha := .Values.ha }}
{{- $_ := set $config "ha" (dict "enabled" true "backend" "kubernetes" "lease_name" (include "fedagg.leaseName" .) "namespace" (include "fedagg.namespace" .) "lease_seconds" (int $ha.leaseSeconds) "renew_deadline_seconds" (int $ha.renewDeadlineSeconds) "retry_seconds" (int $ha.retrySeconds)) }}
{{- end }}
{{- /* The scale-out tier: this pod's role (root or ingest) and how the roles find each other. */}}
{{- if .role }}
{{- $_ := set $config "topology" (include "fedagg.topologyConfig" . | fromYaml) }}
{{- end }}
{{- /* Explicit model paths: an OpenFL plan's best/last_state_path would point into the read-only plan mount. */}}
{{- range $key, $file := dict "best_model" "best.pbuf" "last_model" "last.pbuf" }}
{{- if not (get $storage $key) }}
{{- $_ := set $storage $key (printf "%s/%s" (include "fedagg.stateDir" $) $file) }}
{{- end }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* The container's arguments. */}}
{{- define "fedagg.args" -}}
- serve
- --config
- {{ include "fedagg.configDir" . }}/fedagg.yaml
{{- if .Values.openfl.enabled }}
- --openfl-plan
- {{ include "fedagg.openflDir" . }}/plan.yaml
- --openfl-cols
- {{ include "fedagg.openflDir" . }}/cols.yaml
{{- end }}
{{- with .Values.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The aggregator's pod template (shared by the Job and the Deployment). */}}
{{- define "fedagg.podTemplate" -}}
metadata:
  labels:
    {{- include "fedagg.labels" . | nindent 4 }}
    {{- if .role }}
    {{- include "fedagg.roleLabels" . | nindent 4 }}
    {{- end }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- if eq .Values.workload "Job" }}
  restartPolicy: OnFailure
  {{- else }}
  restartPolicy: Always
  {{- end }}
  serviceAccountName: {{ include "fedagg.serviceAccountName" . }}
  {{- /* An ingest replica never calls the Kubernetes API (the root runs the hook). */}}
  automountServiceAccountToken: {{ and (ne (toString .role) "ingest") (include "fedagg.kubeApi" . | eq "true") }}
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ include "fedagg.terminationGracePeriodSeconds" . }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  {{- with .Values.initContainers }}
  initContainers:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: fedagg
      image: {{ include "fedagg.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        {{- include "fedagg.args" . | nindent 8 }}
      env:
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        {{- if include "fedagg.ha" . }}
        # The leader election's identity (the Lease's holderIdentity): this pod.
        - name: FEDAGG__HA__IDENTITY
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- end }}
        {{- if eq (toString .role) "ingest" }}
        # The ingest replica's name in the tier: the CN of its client certificate, in /etc/fedagg/tier/<name>/.
        - name: FEDAGG__TOPOLOGY__REPLICA
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with .Values.extraEnvFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        {{- if eq (toString .role) "root" }}
        - name: tier
          containerPort: {{ .Values.containerPorts.tier }}
          protocol: TCP
        {{- else }}
        - name: federation
          containerPort: {{ .Values.containerPorts.federation }}
          protocol: TCP
        {{- end }}
        - name: ops
          containerPort: {{ .Values.containerPorts.ops }}
          protocol: TCP
        - name: metrics
          containerPort: {{ .Values.containerPorts.metrics }}
          protocol: TCP
      {{- with .Values.probes.startup }}
      {{- if .enabled }}
      startupProbe:
        grpc:
          port: {{ $.Values.containerPorts.ops }}
          service: liveness
        periodSeconds: {{ .periodSeconds }}
        timeoutSeconds: {{ .timeoutSeconds }}
        failureThreshold: {{ .failureThreshold }}
      {{- end }}
      {{- end }}
      {{- with .Values.probes.readiness }}
      {{- if .enabled }}
      readinessProbe:
        grpc:
          port: {{ $.Values.containerPorts.ops }}
          service: openfl.aggregator.Aggregator
        periodSeconds: {{ .periodSeconds }}
        timeoutSeconds: {{ .timeoutSeconds }}
        failureThreshold: {{ .failureThreshold }}
        successThreshold: {{ .successThreshold }}
      {{- end }}
      {{- end }}
      {{- with .Values.probes.liveness }}
      {{- if .enabled }}
      livenessProbe:
        grpc:
          port: {{ $.Values.containerPorts.ops }}
          service: liveness
        periodSeconds: {{ .periodSeconds }}
        timeoutSeconds: {{ .timeoutSeconds }}
        failureThreshold: {{ .failureThreshold }}
      {{- end }}
      {{- end }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      resources:
        {{- include "fedagg.resources" . | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: {{ include "fedagg.configDir" . }}
          readOnly: true
        {{- if .Values.openfl.enabled }}
        - name: openfl
          mountPath: {{ include "fedagg.openflDir" . }}
          readOnly: true
        {{- end }}
        {{- if include "fedagg.federationTls" . }}
        - name: tls
          mountPath: {{ include "fedagg.tlsDir" . }}
          readOnly: true
        {{- end }}
        {{- if .role }}
        - name: tier
          mountPath: {{ include "fedagg.tierDir" . }}
          readOnly: true
        {{- end }}
        {{- if .Values.initialModel.existingConfigMap }}
        - name: initial-model
          mountPath: {{ include "fedagg.modelDir" . }}
          readOnly: true
        {{- end }}
        - name: state
          mountPath: {{ include "fedagg.stateDir" . }}
        - name: tmp
          mountPath: /tmp
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    {{- with .Values.extraContainers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "fedagg.fullname" . }}-config
        defaultMode: 0444
        items:
          - key: {{ include "fedagg.configKey" . }}
            path: fedagg.yaml
    {{- if .Values.openfl.enabled }}
    - name: openfl
      configMap:
        name: {{ include "fedagg.fullname" . }}-config
        defaultMode: 0444
        items:
          - key: plan.yaml
            path: plan.yaml
          - key: cols.yaml
            path: cols.yaml
    {{- end }}
    {{- if include "fedagg.federationTls" . }}
    - name: tls
      secret:
        secretName: {{ include "fedagg.tlsSecretName" . }}
        defaultMode: 0440
    {{- end }}
    {{- if .role }}
    {{- include "fedagg.tierVolume" . | nindent 4 }}
    {{- end }}
    {{- if .Values.initialModel.existingConfigMap }}
    - name: initial-model
      configMap:
        name: {{ .Values.initialModel.existingConfigMap }}
        defaultMode: 0440
    {{- end }}
    {{- if not .role }}
    - name: state
      {{- if .Values.persistence.enabled }}
      persistentVolumeClaim:
        claimName: {{ include "fedagg.claimName" . }}
      {{- else }}
      emptyDir:
        sizeLimit: {{ .Values.persistence.emptyDir.sizeLimit }}
      {{- end }}
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: {{ .Values.tmpSizeLimit }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with include "fedagg.affinity" . }}
  affinity:
    {{- . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
Where each alert threshold of prometheusRule.alerts is in files/fedagg-rules.yaml: the text the default value
gives (`default`, which must occur in the alert's expression) and how a value is written instead (`format`).
*/}}
{{- define "fedagg.alertThresholds" -}}
FedaggRoundStalled:
  roundSeconds: {default: "fedagg_round_started_timestamp_seconds > 1800", format: "fedagg_round_started_timestamp_seconds > %d"}
FedaggCollaboratorSilent:
  silentSeconds: {default: ") > 3600", format: ") > %d"}
FedaggCertificateExpiringSoon:
  days: {default: "< 7 * 86400", format: "< %d * 86400"}
FedaggCertificateExpiryCritical:
  days: {default: "< 1 * 86400", format: "< %d * 86400"}
FedaggStateVolumeLow:
  availablePercent: {default: "fedagg_state_volume_size_bytes < 10", format: "fedagg_state_volume_size_bytes < %d"}
FedaggStateVolumeFillingUp:
  trendWindow: {default: "fedagg_state_volume_available_bytes[6h]", format: "fedagg_state_volume_available_bytes[%s]"}
  fullWithinHours: {default: ", 24 * 3600)", format: ", %d * 3600)"}
FedaggLeaderFlapping:
  transitions: {default: "fedagg_leader_transitions_total[1h])) > 3", format: "fedagg_leader_transitions_total[1h])) > %d"}
{{- end }}
