// Package v1alpha1 is the relay.kuberelay.io/v1alpha1 API: SmtpRelay (a fleet of
// relay pods), Smarthost (an upstream it delivers through) and RelayDomain (a sender
// domain attached to a relay).
//
// +kubebuilder:object:generate=true
// +groupName=relay.kuberelay.io
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the API group and version of these types.
	GroupVersion = schema.GroupVersion{Group: "relay.kuberelay.io", Version: "v1alpha1"}

	// SchemeBuilder registers the types with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types of this group and version to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
