{{/* The chart's name. */}}
{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's objects' name. */}}
{{- define "switchboard.fullname" -}}
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

{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "switchboard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "switchboard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "switchboard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "switchboard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the pods read: the operator's, or the chart's. */}}
{{- define "switchboard.secretName" -}}
{{- default (include "switchboard.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "switchboard.hasDatabase" -}}
{{- if or .Values.database.url .Values.database.fromExistingSecret }}true{{ end }}
{{- end }}
{{- define "switchboard.hasRedis" -}}
{{- if or .Values.redis.url .Values.redis.fromExistingSecret }}true{{ end }}
{{- end }}
{{- define "switchboard.hasClickhouse" -}}
{{- if or .Values.clickhouse.url .Values.clickhouse.fromExistingSecret }}true{{ end }}
{{- end }}
{{- define "switchboard.hasS3Keys" -}}
{{- if or .Values.s3.accessKeyId .Values.s3.fromExistingSecret }}true{{ end }}
{{- end }}

{{/*
Cluster mode: several nodes share PostgreSQL, Redis and S3. Without all
three, one node on embedded SQLite and its own blob folder.
*/}}
{{- define "switchboard.cluster" -}}
{{- if and (include "switchboard.hasDatabase" .) (include "switchboard.hasRedis" .) .Values.s3.bucket }}true{{ end }}
{{- end }}

{{/* Refuses values that would break the deployment. */}}
{{- define "switchboard.validate" -}}
{{- $cluster := include "switchboard.cluster" . }}
{{- if and (gt (int .Values.replicaCount) 1) (not $cluster) }}
{{- fail "replicaCount > 1 needs database.url (PostgreSQL), redis.url and s3.bucket: embedded SQLite is one process's file, and the blob folder one pod's disk" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not $cluster) }}
{{- fail "autoscaling needs cluster mode: database.url (PostgreSQL), redis.url and s3.bucket" }}
{{- end }}
{{- if and .Values.database.url (not (hasPrefix "postgres" .Values.database.url)) }}
{{- fail "database.url must be a postgres:// URL (leave it empty for embedded SQLite)" }}
{{- end }}
{{- if and .Values.jwt.secret (lt (len .Values.jwt.secret) 32) }}
{{- fail "jwt.secret must be at least 32 bytes" }}
{{- end }}
{{- if and .Values.existingSecret (or .Values.jwt.secret .Values.database.url .Values.redis.url .Values.s3.accessKeyId) }}
{{- fail "with existingSecret, put the secrets in it (and set *.fromExistingSecret) rather than in values" }}
{{- end }}
{{- if and (or .Values.database.fromExistingSecret .Values.redis.fromExistingSecret .Values.clickhouse.fromExistingSecret .Values.s3.fromExistingSecret) (not .Values.existingSecret) }}
{{- fail "*.fromExistingSecret needs existingSecret" }}
{{- end }}
{{- if and .Values.terminationGracePeriodSeconds (le (int .Values.terminationGracePeriodSeconds) (add (int .Values.preStopSleepSeconds) (int .Values.config.drainTimeoutSecs))) }}
{{- fail "terminationGracePeriodSeconds must exceed preStopSleepSeconds + config.drainTimeoutSecs, or the node is killed mid-drain" }}
{{- end }}
{{- end }}

{{- define "switchboard.gracePeriod" -}}
{{- if .Values.terminationGracePeriodSeconds }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- else }}
{{- add (int .Values.preStopSleepSeconds) (int .Values.config.drainTimeoutSecs) 10 }}
{{- end }}
{{- end }}
