package render

import (
	"maps"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/relay/config"
)

// Labels of every object the operator owns for a relay.
const (
	LabelName      = "app.kubernetes.io/name"
	LabelInstance  = "app.kubernetes.io/instance"
	LabelComponent = "app.kubernetes.io/component"
	LabelManagedBy = "app.kubernetes.io/managed-by"

	appName   = "kuberelay"
	component = "relay"
	manager   = "kuberelay"
)

// ConfigMapName is the name of the relay's ConfigMap holding relay.yaml.
func ConfigMapName(relay *relayv1alpha1.SmtpRelay) string { return relay.Name + "-config" }

// SecretName is the name of the operator-owned Secret holding the relay's secret files.
func SecretName(relay *relayv1alpha1.SmtpRelay) string { return relay.Name + "-secrets" }

// Labels are the labels of every object owned by the relay, and of its pods.
func Labels(relay *relayv1alpha1.SmtpRelay) map[string]string {
	return map[string]string{
		LabelName:      appName,
		LabelInstance:  relay.Name,
		LabelComponent: component,
		LabelManagedBy: manager,
	}
}

// CommonLabels are the labels of every object the operator makes, whatever its relay:
// the operator's cache selects relay pods by them.
func CommonLabels() map[string]string {
	return map[string]string{LabelName: appName, LabelManagedBy: manager}
}

// SelectorLabels select the relay's pods. They are a subset of Labels that never
// changes, since a Deployment's selector is immutable.
func SelectorLabels(relay *relayv1alpha1.SmtpRelay) map[string]string {
	return map[string]string{
		LabelName:     appName,
		LabelInstance: relay.Name,
	}
}

// OwnerReference makes the relay the controller of an object, so the object is
// garbage-collected with the relay and its changes enqueue the relay.
func OwnerReference(relay *relayv1alpha1.SmtpRelay) metav1.OwnerReference {
	return metav1.OwnerReference{
		APIVersion:         relayv1alpha1.GroupVersion.String(),
		Kind:               "SmtpRelay",
		Name:               relay.Name,
		UID:                relay.UID,
		Controller:         ptr(true),
		BlockOwnerDeletion: ptr(true),
	}
}

func objectMeta(relay *relayv1alpha1.SmtpRelay, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:            name,
		Namespace:       relay.Namespace,
		Labels:          Labels(relay),
		OwnerReferences: []metav1.OwnerReference{OwnerReference(relay)},
	}
}

// ConfigMap is the relay's ConfigMap: relay.yaml, which holds no secret value.
func ConfigMap(relay *relayv1alpha1.SmtpRelay, res *Result) *corev1.ConfigMap {
	return &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: objectMeta(relay, ConfigMapName(relay)),
		Data:       map[string]string{config.FileName: string(res.ConfigYAML)},
	}
}

// Secret is the operator-owned Secret: the files relay.yaml references.
func Secret(relay *relayv1alpha1.SmtpRelay, res *Result) *corev1.Secret {
	data := make(map[string][]byte, len(res.SecretData))
	for k, v := range res.SecretData {
		data[k] = clone(v)
	}
	return &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: objectMeta(relay, SecretName(relay)),
		Type:       corev1.SecretTypeOpaque,
		Data:       data,
	}
}

// ServiceAccount is the relay pods' identity. The relay never talks to the API
// server, so no token is mounted.
func ServiceAccount(relay *relayv1alpha1.SmtpRelay) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{
		TypeMeta:                     metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta:                   objectMeta(relay, relay.Name),
		AutomountServiceAccountToken: ptr(false),
	}
}

// Service is how clients reach the relay: one port per listener, mapped onto the
// listener's named container port.
func Service(relay *relayv1alpha1.SmtpRelay) *corev1.Service {
	svc := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: objectMeta(relay, relay.Name),
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: SelectorLabels(relay),
		},
	}
	for _, l := range Listeners(relay) {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{
			Name:       l.Name,
			Protocol:   corev1.ProtocolTCP,
			Port:       l.Port,
			TargetPort: intstr.FromString(l.Name),
		})
	}
	if s := relay.Spec.Service; s != nil {
		if s.Type != "" {
			svc.Spec.Type = s.Type
		}
		if len(s.Annotations) > 0 {
			svc.Annotations = maps.Clone(s.Annotations)
		}
		// The API server refuses externalTrafficPolicy on a ClusterIP Service.
		if s.ExternalTrafficPolicy != "" && svc.Spec.Type != corev1.ServiceTypeClusterIP {
			svc.Spec.ExternalTrafficPolicy = s.ExternalTrafficPolicy
		}
	}
	return svc
}

// PodDisruptionBudget keeps relay pods available during voluntary disruptions. It is
// nil when the relay should have none (the reconciler then deletes any it owns):
// by default with fewer than two replicas, where it would block node drains.
func PodDisruptionBudget(relay *relayv1alpha1.SmtpRelay) *policyv1.PodDisruptionBudget {
	p := relay.Spec.PodDisruptionBudget
	enabled := Replicas(relay) > 1
	if p != nil && p.Enabled != nil {
		enabled = *p.Enabled
	}
	if !enabled {
		return nil
	}
	pdb := &policyv1.PodDisruptionBudget{
		TypeMeta:   metav1.TypeMeta{APIVersion: "policy/v1", Kind: "PodDisruptionBudget"},
		ObjectMeta: objectMeta(relay, relay.Name),
		Spec: policyv1.PodDisruptionBudgetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: SelectorLabels(relay)},
			// A crash-looping pod protects nothing: let it be evicted so it cannot
			// block a drain.
			UnhealthyPodEvictionPolicy: ptr(policyv1.AlwaysAllow),
		},
	}
	switch {
	case p != nil && p.MinAvailable != nil:
		pdb.Spec.MinAvailable = ptr(*p.MinAvailable)
	case p != nil && p.MaxUnavailable != nil:
		pdb.Spec.MaxUnavailable = ptr(*p.MaxUnavailable)
	default:
		pdb.Spec.MaxUnavailable = ptr(intstr.FromInt32(1))
	}
	return pdb
}

// Replicas is the relay's number of pods, spec.replicas or its default of 2.
func Replicas(relay *relayv1alpha1.SmtpRelay) int32 {
	if r := relay.Spec.Replicas; r != nil {
		return *r
	}
	return 2
}

func ptr[T any](v T) *T { return &v }
