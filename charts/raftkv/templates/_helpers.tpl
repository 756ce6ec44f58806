{{- define "raftkv.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "raftkv.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "raftkv.operatorName" -}}
{{- printf "%s-operator" (include "raftkv.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "raftkv.clusterName" -}}
{{- default (include "raftkv.fullname" .) .Values.cluster.name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "raftkv.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "raftkv.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "raftkv.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "raftkv.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: raftkv
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "raftkv.operatorSelector" -}}
app.kubernetes.io/name: {{ include "raftkv.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
