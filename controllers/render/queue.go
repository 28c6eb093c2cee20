package render

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/relay/config"
)

// defaultQueueSize is each pod's volume when spec.delivery.queue.storage.size is unset
// (the API's default).
var defaultQueueSize = resource.MustParse("10Gi")

// QueueMode reports whether the relay queues mail (spec.delivery.mode Queue).
func QueueMode(relay *relayv1alpha1.SmtpRelay) bool {
	d := relay.Spec.Delivery
	return d != nil && d.Mode == relayv1alpha1.DeliveryQueue
}

// QueueClaimPrefix starts the name of every Queue-mode claim: the StatefulSet names
// them <template>-<pod>, the pod being <relay>-<ordinal>.
func QueueClaimPrefix(relay *relayv1alpha1.SmtpRelay) string { return volumeQueue + "-" + relay.Name }

// QueueClaimName is the claim of the Queue-mode pod with this ordinal.
func QueueClaimName(relay *relayv1alpha1.SmtpRelay, ordinal int) string {
	return fmt.Sprintf("%s-%d", QueueClaimPrefix(relay), ordinal)
}

// PeerServiceName is the headless Service that gives Queue-mode pods stable names.
func PeerServiceName(relay *relayv1alpha1.SmtpRelay) string { return relay.Name + "-peers" }

func queueSpec(relay *relayv1alpha1.SmtpRelay) relayv1alpha1.QueueSpec {
	if d := relay.Spec.Delivery; d != nil && d.Queue != nil {
		return *d.Queue
	}
	return relayv1alpha1.QueueSpec{}
}

func queueSize(q relayv1alpha1.QueueSpec) resource.Quantity {
	if q.Storage.Size != nil {
		return *q.Storage.Size
	}
	return defaultQueueSize
}

// StatefulSet runs the relay pods in Queue mode: the pod of Deployment plus a
// PersistentVolumeClaim each for its queue. Claims are kept when the relay is scaled
// down or deleted: a claim may still hold mail, and a pod that comes back with it
// delivers what it held. replicas is Replicas(relay) except while a scale-down waits
// for the leaving pods to empty their queues.
func StatefulSet(relay *relayv1alpha1.SmtpRelay, defaultImage string, replicas int32) *appsv1.StatefulSet {
	q := queueSpec(relay)
	claim := corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: volumeQueue, Labels: Labels(relay)},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: q.Storage.StorageClassName,
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: queueSize(q)},
			},
		},
	}
	return &appsv1.StatefulSet{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "StatefulSet"},
		ObjectMeta: objectMeta(relay, relay.Name),
		Spec: appsv1.StatefulSetSpec{
			Replicas:    ptr(replicas),
			Selector:    &metav1.LabelSelector{MatchLabels: SelectorLabels(relay)},
			ServiceName: PeerServiceName(relay),
			// Pods start and stop together; each has its own queue, so none waits for
			// another.
			PodManagementPolicy: appsv1.ParallelPodManagement,
			UpdateStrategy: appsv1.StatefulSetUpdateStrategy{
				Type:          appsv1.RollingUpdateStatefulSetStrategyType,
				RollingUpdate: &appsv1.RollingUpdateStatefulSetStrategy{MaxUnavailable: ptr(intstr.FromInt32(1))},
			},
			Template:             podTemplate(relay, defaultImage, appsv1.ControllerRevisionHashLabelKey),
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{claim},
			PersistentVolumeClaimRetentionPolicy: &appsv1.StatefulSetPersistentVolumeClaimRetentionPolicy{
				WhenDeleted: appsv1.RetainPersistentVolumeClaimRetentionPolicyType,
				WhenScaled:  appsv1.RetainPersistentVolumeClaimRetentionPolicyType,
			},
		},
	}
}

// PeerService is the headless Service of Queue mode's StatefulSet: each pod is
// reachable as <pod>.<relay>-peers, including while it is not ready.
func PeerService(relay *relayv1alpha1.SmtpRelay) *corev1.Service {
	svc := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: objectMeta(relay, PeerServiceName(relay)),
		Spec: corev1.ServiceSpec{
			ClusterIP:                corev1.ClusterIPNone,
			Selector:                 SelectorLabels(relay),
			PublishNotReadyAddresses: true,
		},
	}
	for _, l := range Listeners(relay) {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: l.Name, Protocol: corev1.ProtocolTCP,
			Port: l.Port, TargetPort: intstr.FromString(l.Name)})
	}
	svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: HTTPPortName, Protocol: corev1.ProtocolTCP,
		Port: HTTPPort, TargetPort: intstr.FromString(HTTPPortName)})
	return svc
}

// delivery is relay.yaml's delivery section; unset fields are left to the relay's
// defaults, which are the API's, except maxBytes, whose default follows the volume.
func delivery(relay *relayv1alpha1.SmtpRelay) config.Delivery {
	if !QueueMode(relay) {
		return config.Delivery{}
	}
	q := queueSpec(relay)
	// A directory of the relay's own on the volume: the volume's root belongs to root, and
	// the queue's directory must be readable by the relay alone (mode 0700).
	d := config.Delivery{Mode: config.Queue, Queue: config.QueueConfig{Dir: QueueDir + "/spool", MaxAge: duration(q.MaxAge)}}
	if q.MaxMessages != nil {
		d.Queue.MaxMessages = int(*q.MaxMessages)
	}
	size := queueSize(q)
	d.Queue.MaxBytes = size.Value() / 10 * 8
	if q.MaxBytes != nil {
		d.Queue.MaxBytes = q.MaxBytes.Value()
	}
	if r := q.Retry; r != nil {
		d.Queue.Retry = config.RetryConfig{First: duration(r.First), MaxInterval: duration(r.MaxInterval)}
		if r.Backoff != nil {
			d.Queue.Retry.Backoff = float64(*r.Backoff)
		}
	}
	return d
}
