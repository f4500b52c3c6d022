{{/* vim: set filetype=mustache: */}}
{{/*
The scale-out tier (topology.ingest.replicas > 0): a root StatefulSet of one, reachable only by the ingest
replicas on its tier port, and an ingest StatefulSet of K behind the federation Service.
*/}}

{{/*
Whether the tier is rendered: "true" or "" (K = 0: the standalone chart). Refuses, naming the values, what does
not fit: a Job (the tier's pods are StatefulSets that stay up), ha.enabled (the root is one pod on its own
ReadWriteOnce volume, restarted by its StatefulSet; no leader election), no persistence or an existing claim (each
pod needs its own claim from the StatefulSet's volumeClaimTemplates), and a name too long for the StatefulSets'
pod labels.
*/}}
{{- define "fedagg.tier" -}}
{{- $replicas := int .Values.topology.ingest.replicas }}
{{- if gt $replicas 0 }}
{{- if ne .Values.workload "Deployment" }}
{{- fail (printf "topology.ingest.replicas (%d) needs workload: Deployment (got %s): the root and the ingest replicas are StatefulSets that stay up after the experiment" $replicas .Values.workload) }}
{{- end }}
{{- if .Values.ha.enabled }}
{{- fail (printf "topology.ingest.replicas (%d) and ha.enabled cannot be combined: the tier's root is a StatefulSet of one that Kubernetes restarts on its own volume, and the ingest replicas are already redundant; set ha.enabled=false" $replicas) }}
{{- end }}
{{- if not .Values.persistence.enabled }}
{{- fail (printf "topology.ingest.replicas (%d) needs persistence.enabled: true: an ingest replica's acknowledged uploads and the root's state must survive a restart (a claim each, from volumeClaimTemplates)" $replicas) }}
{{- end }}
{{- if .Values.persistence.existingClaim }}
{{- fail (printf "topology.ingest.replicas (%d) cannot use persistence.existingClaim (%s): the root and every ingest replica get a claim of their own (topology.root.storageSize, topology.ingest.storageSize)" $replicas .Values.persistence.existingClaim) }}
{{- end }}
{{- include "fedagg.tierConfigRefusals" (list $replicas .Values.config) }}
{{- if gt (len (include "fedagg.ingestName" .)) 52 }}
{{- fail (printf "the StatefulSet name %s is longer than 52 characters: its pods' controller-revision-hash label would exceed 63; shorten fullnameOverride or the release name" (include "fedagg.ingestName" .)) }}
{{- end }}
true
{{- end }}
{{- end }}

{{/*
What fedagg's config check refuses under a tier role, refused at render time instead of in a crash-looping pod:
federation TLS other than mtls (the root trusts a replica to have checked each collaborator's certificate) and an
aggregation method that is not exact from partial sums
(fedagg.config.topology.PARTIAL_SUM_METHODS). An OpenFL plan (openfl.enabled) is checked when the pods start.
Called with (list K .Values.config).
*/}}
{{- define "fedagg.tierConfigRefusals" -}}
{{- $replicas := index . 0 }}
{{- $config := index . 1 }}
{{- $tier := printf "topology.ingest.replicas (%d)" $replicas }}
{{- if ne $config.server.tls.mode "mtls" }}
{{- fail (printf "%s needs config.server.tls.mode: mtls (got %s): the root trusts an ingest replica to have checked each collaborator's certificate" $tier $config.server.tls.mode) }}
{{- end }}
{{- $federation := $config.federation | default dict }}
{{- $exact := list "weighted_average" "fedcurv_weighted_average" "adagrad" "adam" "yogi" }}
{{- range $name, $task := dig "tasks" dict $federation }}
{{- $method := dig "aggregation" "weighted_average" $task }}
{{- if not (has $method $exact) }}
{{- fail (printf "config.federation.tasks.%s.aggregation (%s) cannot be used with %s: the tier computes only methods exact from partial sums (%s); forwarding contributions to the root is not built yet" $name $method $tier (join ", " $exact)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The StatefulSets (and the root's Service) by role. */}}
{{- define "fedagg.rootName" -}}
{{- printf "%s-root" (include "fedagg.fullname" .) }}
{{- end }}
{{- define "fedagg.ingestName" -}}
{{- printf "%s-ingest" (include "fedagg.fullname" .) }}
{{- end }}

{{/* The ingest replicas' pod names (StatefulSet ordinals), which are also their client certificates' CNs. */}}
{{- define "fedagg.ingestReplicas" -}}
{{- range $ordinal := until (int .Values.topology.ingest.replicas) }}
- {{ printf "%s-%d" (include "fedagg.ingestName" $) $ordinal }}
{{- end }}
{{- end }}

{{/* The root's in-cluster address, as the ingest replicas dial it (host:port; its server certificate names it). */}}
{{- define "fedagg.rootAddress" -}}
{{- printf "%s.%s.svc:%d" (include "fedagg.rootName" .) (include "fedagg.namespace" .) (int .Values.containerPorts.tier) }}
{{- end }}

{{/* The label that tells the roles' pods apart (the selector labels are the same for both). */}}
{{- define "fedagg.roleLabels" -}}
fedagg.io/role: {{ .role }}
{{- end }}

{{/* Selector labels of one role's pods. Called with a role context (see fedagg.roleContext). */}}
{{- define "fedagg.roleSelectorLabels" -}}
{{ include "fedagg.selectorLabels" . }}
{{ include "fedagg.roleLabels" . }}
{{- end }}

{{/* Where a pod reads its tier certificate, key and CA (a directory per replica for the ingest pods). */}}
{{- define "fedagg.tierDir" -}}/etc/fedagg/tier{{- end }}

{{/* The tier's secrets: the root's server certificate, each ingest replica's client certificate. */}}
{{- define "fedagg.rootTierSecret" -}}
{{- printf "%s-tier" (include "fedagg.rootName" .) }}
{{- end }}
{{- define "fedagg.ingestTierSecret" -}}
{{- printf "%s-tier" .replica }}
{{- end }}

{{/*
The topology section of one role's fedagg.yaml: the tier's certificates in fedagg.tierDir (the root's own files
there, each ingest replica's in its subdirectory). The ingest replica's name comes from the pod
(FEDAGG__TOPOLOGY__REPLICA).
*/}}
{{- define "fedagg.topologyConfig" -}}
{{- $topology := dict "role" .role "tier_certificate_dir" (include "fedagg.tierDir" .) }}
{{- if eq .role "root" }}
{{- $_ := set $topology "tier_port" (int .Values.containerPorts.tier) }}
{{- $_ := set $topology "tier_bind_address" "[::]" }}
{{- $_ := set $topology "replicas" (include "fedagg.ingestReplicas" . | fromYamlArray) }}
{{- $_ := set $topology "lost_replica_seconds" .Values.topology.lostReplicaSeconds }}
{{- else }}
{{- $_ := set $topology "root_address" (include "fedagg.rootAddress" .) }}
{{- end }}
{{- toYaml $topology }}
{{- end }}

{{/*
Whether this pod serves the collaborators' federation port with the federation certificates (fedagg.tlsDir): the
standalone aggregator and the ingest replicas, not the root (its only server is the tier port, with the tier's
certificates).
*/}}
{{- define "fedagg.federationTls" -}}
{{- if and (include "fedagg.tlsEnabled" .) (ne (toString .role) "root") }}true{{- end }}
{{- end }}

{{/* The tier's certificate issuer: topology.tls.issuerRef, else the chart's own internal CA. */}}
{{- define "fedagg.tierIssuerName" -}}
{{- default (printf "%s-tier-ca" (include "fedagg.fullname" .)) .Values.topology.tls.issuerRef.name }}
{{- end }}

{{/* The container's requests and limits: the role's own (topology.<role>.resources), else `resources`. */}}
{{- define "fedagg.resources" -}}
{{- $resources := .Values.resources }}
{{- if .role }}
{{- with (index .Values.topology .role).resources }}
{{- $resources = . }}
{{- end }}
{{- end }}
{{- toYaml $resources }}
{{- end }}

{{/* The key of the pod's fedagg.yaml in the ConfigMap: one per role with the tier. */}}
{{- define "fedagg.configKey" -}}
{{- if .role }}fedagg-{{ .role }}.yaml{{- else }}fedagg.yaml{{- end }}
{{- end }}

{{/*
The tier's certificates, mounted as whole directories (rotations reach the pod): the root's secret at
/etc/fedagg/tier; every ingest replica's secret at /etc/fedagg/tier/<replica>/ of every ingest pod (one pod
template for all: each pod's own directory is the one named after it).
*/}}
{{- define "fedagg.tierVolume" -}}
- name: tier
{{- if eq .role "root" }}
  secret:
    secretName: {{ include "fedagg.rootTierSecret" . }}
    defaultMode: 0440
{{- else }}
  projected:
    defaultMode: 0440
    sources:
      {{- range $replica := include "fedagg.ingestReplicas" . | fromYamlArray }}
      - secret:
          name: {{ include "fedagg.ingestTierSecret" (dict "replica" $replica) }}
          items:
            {{- range $file := list "tls.crt" "tls.key" "ca.crt" }}
            - key: {{ $file }}
              path: {{ $replica }}/{{ $file }}
            {{- end }}
      {{- end }}
{{- end }}
{{- end }}

{{/* The tier's roles; a role's templates are rendered with (merge (dict "role" <role>) $). */}}
{{- define "fedagg.roles" -}}
- root
- ingest
{{- end }}
