{{- define "keyzero.fullname" -}}
{{- printf "%s-keyzero" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "keyzero.labels" -}}
app.kubernetes.io/name: keyzero
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "keyzero.selector" -}}
app.kubernetes.io/name: keyzero
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "keyzero.tlsSecret" -}}
{{- if .Values.tls.secretName -}}{{ .Values.tls.secretName }}{{- else -}}{{ include "keyzero.fullname" . }}-tls{{- end -}}
{{- end -}}
