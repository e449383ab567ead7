{{- define "pgcutover.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pgcutover.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pgcutover.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pgcutover.peersHost" -}}
{{ include "pgcutover.fullname" . }}-peers.{{ .Release.Namespace }}.svc
{{- end -}}

{{- define "pgcutover.authSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "pgcutover.fullname" .)) -}}
{{- end -}}

{{- define "pgcutover.tokenSecret" -}}
{{- .Values.admin.existingSecret | default (printf "%s-admin" (include "pgcutover.fullname" .)) -}}
{{- end -}}

{{- define "pgcutover.hasToken" -}}
{{- if or .Values.admin.existingSecret .Values.admin.token -}}true{{- end -}}
{{- end -}}

{{- define "pgcutover.adminScheme" -}}
{{- if .Values.admin.tls.secretName -}}HTTPS{{- else -}}HTTP{{- end -}}
{{- end -}}
