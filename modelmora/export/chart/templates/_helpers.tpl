{{/* Names and labels shared by every object of the chart. */}}
{{- define "modelmora.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelmora.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "modelmora.labels" -}}
{{ include "modelmora.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "modelmora.image" -}}
{{ printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end -}}

{{/* The pod of the Deployment or the StatefulSet. */}}
{{- define "modelmora.pod" -}}
metadata:
  labels:
    {{- include "modelmora.selectorLabels" . | nindent 4 }}
  annotations:
    checksum/project: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: {{ .Values.runAsUser }}
    runAsGroup: {{ .Values.runAsUser }}
    fsGroup: {{ .Values.runAsUser }}
  initContainers:
    # The project's files into a writable folder (jobs and keys live in its .modelmora/), then
    # the lock's models into the cache, unless the cache is a volume someone else filled.
    - name: install
      image: {{ include "modelmora.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      workingDir: /project
      command: ["sh", "-c"]
      {{- if .Values.cache.existingClaim }}
      args: ["cp /etc/modelmora/modelmora.toml /etc/modelmora/modelmora.lock /project/"]
      {{- else }}
      args: ["cp /etc/modelmora/modelmora.toml /etc/modelmora/modelmora.lock /project/ && exec modelmora install --frozen"]
      {{- end }}
      env:
        - name: MODELMORA_HOME
          value: /cache
        {{- if .Values.hfToken.secretName }}
        - name: HF_TOKEN
          valueFrom:
            secretKeyRef:
              name: {{ .Values.hfToken.secretName }}
              key: {{ .Values.hfToken.key }}
        {{- end }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      volumeMounts:
        - name: project-files
          mountPath: /etc/modelmora
          readOnly: true
        - name: project
          mountPath: /project
        - name: cache
          mountPath: /cache
          readOnly: {{ not (empty .Values.cache.existingClaim) }}
  containers:
    - name: modelmora
      image: {{ include "modelmora.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      workingDir: /project
      command: ["modelmora"]
      args:
        - serve
        - --host
        - 0.0.0.0
        - --port
        - {{ .Values.server.httpPort | quote }}
        - --frozen
        - --offline
        {{- if .Values.server.grpcPort }}
        - --grpc-port
        - {{ .Values.server.grpcPort | quote }}
        {{- end }}
        {{- with .Values.extraArgs }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      env:
        - name: MODELMORA_HOME
          value: /cache
        {{- if .Values.apiKey.secretName }}
        - name: MODELMORA_API_KEY
          valueFrom:
            secretKeyRef:
              name: {{ .Values.apiKey.secretName }}
              key: {{ .Values.apiKey.key }}
        {{- end }}
      ports:
        - name: http
          containerPort: {{ .Values.server.httpPort }}
          protocol: TCP
        {{- if .Values.server.grpcPort }}
        - name: grpc
          containerPort: {{ .Values.server.grpcPort }}
          protocol: TCP
        {{- end }}
      livenessProbe:
        httpGet:
          path: /health
          port: http
        periodSeconds: 10
        failureThreshold: 3
      readinessProbe:
        httpGet:
          path: /ready
          port: http
        periodSeconds: 5
        failureThreshold: 2
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      volumeMounts:
        - name: project
          mountPath: /project
        - name: cache
          mountPath: /cache
          readOnly: {{ .Values.cache.readOnlyInServer }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  volumes:
    - name: project-files
      configMap:
        name: {{ include "modelmora.fullname" . }}-project
    - name: project
      emptyDir: {}
    {{- if .Values.cache.existingClaim }}
    - name: cache
      persistentVolumeClaim:
        claimName: {{ .Values.cache.existingClaim }}
        readOnly: true
    {{- else if ne .Values.workload "StatefulSet" }}
    - name: cache
      emptyDir:
        sizeLimit: {{ .Values.cache.size }}
    {{- end }}
{{- end -}}
