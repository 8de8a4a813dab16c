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

{{- define "keyzero.dnsNames" -}}
{{- $n := include "keyzero.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $n (printf "%s.%s" $n $ns) (printf "%s.%s.svc" $n $ns) (printf "%s.%s.svc.cluster.local" $n $ns) | toJson -}}
{{- end -}}

{{- define "keyzero.url" -}}
https://{{ include "keyzero.fullname" . }}.{{ .Release.Namespace }}.svc:{{ .Values.service.port }}
{{- end -}}

{{- define "keyzero.bundle" -}}
{{- if .Values.bundle -}}
{{ .Values.bundle }}
{{- else -}}
# The cluster's service-account tokens (audience keyzero: the injected sidecars' own tokens).
# Keys come from the API server, which serves them to any service account.
identity:
  issuers:
  - issuer: {{ .Values.serviceAccountIssuer | quote }}
    audiences: [{{ .Values.injector.tokenAudience | quote }}]
    algorithms: ["RS256", "ES256"]
    jwks_url: "https://kubernetes.default.svc/openid/v1/jwks"
    jwks_ca_file: "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    jwks_token_file: "/var/run/secrets/kubernetes.io/serviceaccount/token"
# Nothing is allowed until you add policies, for example:
# - match: "secret/data/agents/**"
#   rules:
#   - cel: "identity['kubernetes.io'].namespace == 'agents'"
#     effect: allow
policies: []
{{- end -}}
{{- end -}}
