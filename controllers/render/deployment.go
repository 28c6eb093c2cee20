package render

import (
	"maps"
	"strconv"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
)

// How relay pods are laid out; the flags are those of relay/cmd/relay.
const (
	// ContainerName is the name of the relay container.
	ContainerName = "relay"
	// HTTPPort serves /healthz, /readyz, /status and /metrics.
	HTTPPort = 9090
	// HTTPPortName names HTTPPort on the container.
	HTTPPortName = "http"
	// ConfigDir is where the ConfigMap is mounted.
	ConfigDir = "/etc/kuberelay/config"
	// SecretsDir is where the operator-owned Secret is mounted.
	SecretsDir = "/etc/kuberelay/secrets"
	// SpoolDir holds messages being DKIM-signed that do not fit in memory.
	SpoolDir = "/var/spool/kuberelay"
	// QueueDir is where Queue mode's volume is mounted, the relay's queue directory.
	QueueDir = "/var/lib/kuberelay/queue"
	// ListenersAnnotation on the pod template describes the listeners the relay binds
	// at start-up (it cannot re-bind them on reload), so a listener change rolls pods.
	ListenersAnnotation = "relay.kuberelay.io/listeners"

	// shutdownGrace lets transactions in progress finish after SIGTERM.
	shutdownGrace = 30 * time.Second
	// preStopSleep keeps the pod serving while kube-proxy and load balancers stop
	// sending it new connections; only then does the relay get SIGTERM.
	preStopSleep = 5
	// terminationGracePeriod covers preStopSleep, shutdownGrace and the final 421s
	// before the kubelet kills the container.
	terminationGracePeriod = 45
	// nonRootID is the "nonroot" user and group of distroless images.
	nonRootID = 65532

	volumeConfig  = "config"
	volumeSecrets = "secrets"
	volumeSpool   = "spool"
	volumeTmp     = "tmp"
	volumeQueue   = "queue"
)

var (
	defaultResources = corev1.ResourceRequirements{
		Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("50m"),
			corev1.ResourceMemory: resource.MustParse("64Mi"),
		},
		Limits: corev1.ResourceList{
			corev1.ResourceMemory: resource.MustParse("256Mi"),
		},
	}
	spoolSizeLimit = resource.MustParse("1Gi")
	tmpSizeLimit   = resource.MustParse("64Mi")
)

// Deployment runs the relay pods, on spec.image or else defaultImage (the operator's
// own image). The pod template depends only on the image, the listeners, the
// resources and the scheduling fields: everything that hot-reloads reaches the pods
// through the mounted ConfigMap and Secret, which are mounted as directories (never
// subPath) so the kubelet's atomic updates reach running pods.
func Deployment(relay *relayv1alpha1.SmtpRelay, defaultImage string) *appsv1.Deployment {
	selector := SelectorLabels(relay)
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: objectMeta(relay, relay.Name),
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(Replicas(relay)),
			Selector: &metav1.LabelSelector{MatchLabels: selector},
			// Surge, never drop below the wanted number of pods: clients hold their
			// mail until the relay accepts it, so capacity matters more than speed.
			Strategy: appsv1.DeploymentStrategy{
				Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{
					MaxUnavailable: ptr(intstr.FromInt32(0)),
					MaxSurge:       ptr(intstr.FromInt32(1)),
				},
			},
			Template: podTemplate(relay, defaultImage, appsv1.DefaultDeploymentUniqueLabelKey),
		},
	}
}

// podTemplate is the relay pod of either workload. revisionLabel is the label its
// controller puts on each revision's pods, which keeps the default spread per rollout.
func podTemplate(relay *relayv1alpha1.SmtpRelay, defaultImage, revisionLabel string) corev1.PodTemplateSpec {
	image := relay.Spec.Image
	if image == "" {
		image = defaultImage
	}
	listeners := Listeners(relay)

	ports := make([]corev1.ContainerPort, 0, len(listeners)+1)
	for _, l := range listeners {
		ports = append(ports, corev1.ContainerPort{Name: l.Name, ContainerPort: l.ContainerPort, Protocol: corev1.ProtocolTCP})
	}
	ports = append(ports, corev1.ContainerPort{Name: HTTPPortName, ContainerPort: HTTPPort, Protocol: corev1.ProtocolTCP})

	resources := defaultResources.DeepCopy()
	if r := relay.Spec.Resources; r != nil {
		resources = r.DeepCopy()
	}

	container := corev1.Container{
		Name:    ContainerName,
		Image:   image,
		Command: []string{"/relay"},
		Args: []string{
			"--config-dir=" + ConfigDir,
			"--secrets-dir=" + SecretsDir,
			"--http-address=:" + strconv.Itoa(HTTPPort),
			"--spool-dir=" + SpoolDir,
			"--shutdown-grace=" + shutdownGrace.String(),
		},
		Env:       goMemLimit(resources),
		Ports:     ports,
		Resources: *resources,
		VolumeMounts: []corev1.VolumeMount{
			{Name: volumeConfig, MountPath: ConfigDir, ReadOnly: true},
			{Name: volumeSecrets, MountPath: SecretsDir, ReadOnly: true},
			{Name: volumeSpool, MountPath: SpoolDir},
			{Name: volumeTmp, MountPath: "/tmp"},
		},
		LivenessProbe: &corev1.Probe{
			ProbeHandler:     httpGet("/healthz"),
			PeriodSeconds:    10,
			TimeoutSeconds:   2,
			SuccessThreshold: 1,
			FailureThreshold: 3,
		},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:     httpGet("/readyz"),
			PeriodSeconds:    5,
			TimeoutSeconds:   2,
			SuccessThreshold: 1,
			FailureThreshold: 2,
		},
		// The image has no shell: the kubelet sleeps for us.
		Lifecycle: &corev1.Lifecycle{
			PreStop: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: preStopSleep}},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr(true),
			RunAsUser:                ptr(int64(nonRootID)),
			RunAsGroup:               ptr(int64(nonRootID)),
			ReadOnlyRootFilesystem:   ptr(true),
			AllowPrivilegeEscalation: ptr(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}

	pod := corev1.PodSpec{
		ServiceAccountName:            relay.Name,
		AutomountServiceAccountToken:  ptr(false),
		EnableServiceLinks:            ptr(false),
		TerminationGracePeriodSeconds: ptr(int64(terminationGracePeriod)),
		SecurityContext: &corev1.PodSecurityContext{
			RunAsNonRoot: ptr(true),
			RunAsUser:    ptr(int64(nonRootID)),
			RunAsGroup:   ptr(int64(nonRootID)),
			// The Secret's files are readable by this group only (mode 0440).
			FSGroup:        ptr(int64(nonRootID)),
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		Containers: []corev1.Container{container},
		Volumes: []corev1.Volume{
			{Name: volumeConfig, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: ConfigMapName(relay)},
				DefaultMode:          ptr(int32(0o444)),
			}}},
			{Name: volumeSecrets, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
				SecretName:  SecretName(relay),
				DefaultMode: ptr(int32(0o440)),
			}}},
			{Name: volumeSpool, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: &spoolSizeLimit}}},
			{Name: volumeTmp, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: &tmpSizeLimit}}},
		},
	}
	if QueueMode(relay) {
		// The queue lives on the pod's own claim (StatefulSet volumeClaimTemplates).
		pod.Containers[0].VolumeMounts = append(pod.Containers[0].VolumeMounts,
			corev1.VolumeMount{Name: volumeQueue, MountPath: QueueDir})
	}
	scheduling(relay, &pod, revisionLabel)
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{
			Labels: Labels(relay),
			Annotations: map[string]string{
				"kubectl.kubernetes.io/default-container": ContainerName,
				ListenersAnnotation:                       listenersSummary(listeners),
			},
		},
		Spec: pod,
	}
}

// scheduling copies the placement fields and, when the user spreads the pods in no
// way of their own, spreads them across nodes (preferred, so a small cluster still
// runs them all).
func scheduling(relay *relayv1alpha1.SmtpRelay, pod *corev1.PodSpec, revisionLabel string) {
	spec := &relay.Spec
	if len(spec.NodeSelector) > 0 {
		pod.NodeSelector = maps.Clone(spec.NodeSelector)
	}
	for i := range spec.Tolerations {
		pod.Tolerations = append(pod.Tolerations, *spec.Tolerations[i].DeepCopy())
	}
	if spec.Affinity != nil {
		pod.Affinity = spec.Affinity.DeepCopy()
	}
	for i := range spec.TopologySpreadConstraints {
		pod.TopologySpreadConstraints = append(pod.TopologySpreadConstraints, *spec.TopologySpreadConstraints[i].DeepCopy())
	}
	pod.PriorityClassName = spec.PriorityClassName

	if len(pod.TopologySpreadConstraints) == 0 && (pod.Affinity == nil || pod.Affinity.PodAntiAffinity == nil) {
		pod.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{
			MaxSkew:           1,
			TopologyKey:       corev1.LabelHostname,
			WhenUnsatisfiable: corev1.ScheduleAnyway,
			LabelSelector:     &metav1.LabelSelector{MatchLabels: SelectorLabels(relay)},
			// Spread each rollout's pods on their own, not together with the old ones.
			MatchLabelKeys: []string{revisionLabel},
		}}
	}
}

// goMemLimit tells the Go runtime about the container's memory limit, with headroom,
// so it collects garbage before the kernel kills the container.
func goMemLimit(r *corev1.ResourceRequirements) []corev1.EnvVar {
	limit, ok := r.Limits[corev1.ResourceMemory]
	if !ok || limit.Value() <= 0 {
		return nil
	}
	return []corev1.EnvVar{{Name: "GOMEMLIMIT", Value: strconv.FormatInt(limit.Value()/10*9, 10)}}
}

func httpGet(path string) corev1.ProbeHandler {
	return corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
		Path:   path,
		Port:   intstr.FromString(HTTPPortName),
		Scheme: corev1.URISchemeHTTP,
	}}
}
