{{/* vim: set filetype=mustache: */}}
{{/* High availability (ha.*): the checks, the Lease, the API access, the budget and the anti-affinity. */}}

{{/*
Whether the replicas elect a leader (ha.enabled): "true" or "". Refuses, naming the values, what cannot work: a
Job (its pods complete; standbys would never end), state that is not one volume shared across nodes (each pod's
emptyDir; a ReadWriteOnce claim attaches to one node only), no readiness probe (standbys would receive
collaborators) and Lease timings that cannot fence (a leader must give up before its Lease expires).
*/}}
{{- define "fedagg.ha" -}}
{{- $ha := .Values.ha }}
{{- if $ha.enabled }}
{{- if ne .Values.workload "Deployment" }}
{{- fail (printf "ha.enabled needs workload: Deployment (got %s): standbys never complete, a Job would not either" .Values.workload) }}
{{- end }}
{{- if not .Values.persistence.enabled }}
{{- fail "ha.enabled needs persistence.enabled: true: the replicas share one state volume (ReadWriteMany), each pod's emptyDir would be its own" }}
{{- end }}
{{- if and (not .Values.persistence.existingClaim) (not (has "ReadWriteMany" .Values.persistence.accessModes)) }}
{{- fail (printf "ha.enabled needs persistence.accessModes: [ReadWriteMany] (got %v): the replicas run on different nodes and share the state volume; a ReadWriteOnce volume attaches to one node only (README.md, High availability: NFSv4, CephFS, EFS, Filestore)" .Values.persistence.accessModes) }}
{{- end }}
{{- if not .Values.probes.readiness.enabled }}
{{- fail "ha.enabled needs probes.readiness.enabled: true: readiness keeps the standbys (NOT_SERVING) out of the federation Service" }}
{{- end }}
{{- if not (and (gt (int $ha.leaseSeconds) (int $ha.renewDeadlineSeconds)) (gt (int $ha.renewDeadlineSeconds) (int $ha.retrySeconds))) }}
{{- fail (printf "ha.leaseSeconds (%v) > ha.renewDeadlineSeconds (%v) > ha.retrySeconds (%v) is needed: a leader must stop serving before its Lease expires, and retry before its deadline" $ha.leaseSeconds $ha.renewDeadlineSeconds $ha.retrySeconds) }}
{{- end }}
true
{{- end }}
{{- end }}

{{/* The leader election's Lease. */}}
{{- define "fedagg.leaseName" -}}
{{- default (printf "%s-leader" (include "fedagg.fullname" .)) .Values.ha.leaseName }}
{{- end }}

{{/* Whether fedagg calls the Kubernetes API (the hook, the leader election): a token is mounted. */}}
{{- define "fedagg.kubeApi" -}}
{{- if or (include "fedagg.kubeHook" .) (include "fedagg.ha" .) }}true{{- end }}
{{- end }}

{{/* Whether the PodDisruptionBudget is rendered: podDisruptionBudget.enabled, or when null, ha.enabled. */}}
{{- define "fedagg.disruptionBudget" -}}
{{- $enabled := .Values.podDisruptionBudget.enabled }}
{{- if kindIs "invalid" $enabled }}{{- $enabled = .Values.ha.enabled }}{{- end }}
{{- if $enabled }}true{{- end }}
{{- end }}

{{/*
The pod's affinity: `affinity`, plus with ha.enabled an anti-affinity that spreads the replicas over
ha.topologyKey (unless `affinity` has its own podAntiAffinity, or ha.podAntiAffinity is none).
*/}}
{{- define "fedagg.affinity" -}}
{{- $affinity := deepCopy (.Values.affinity | default dict) }}
{{- $mode := .Values.ha.podAntiAffinity }}
{{- if and (include "fedagg.ha" .) (ne $mode "none") (not (hasKey $affinity "podAntiAffinity")) }}
{{- $term := dict "topologyKey" .Values.ha.topologyKey "labelSelector" (dict "matchLabels" (include "fedagg.selectorLabels" . | fromYaml)) }}
{{- if eq $mode "required" }}
{{- $_ := set $affinity "podAntiAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (list $term)) }}
{{- else }}
{{- $_ := set $affinity "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" 100 "podAffinityTerm" $term))) }}
{{- end }}
{{- end }}
{{- with $affinity }}
{{- toYaml . }}
{{- end }}
{{- end }}
