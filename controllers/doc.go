// Package controllers reconciles SmtpRelays, Smarthosts and RelayDomains into running
// relay fleets: a ConfigMap and Secret holding the relay's configuration, and the
// Deployment, Service, PodDisruptionBudget and ServiceAccount that run it. The objects
// themselves are built by the pure functions of package controllers/render.
package controllers

// The manager's permissions, generated into config/rbac by `make manifests`.
//
// +kubebuilder:rbac:groups=relay.kuberelay.io,resources=smtprelays;smarthosts;relaydomains;relayclients,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=relay.kuberelay.io,resources=smtprelays/status;smarthosts/status;relaydomains/status;relayclients/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=configmaps;secrets;services;serviceaccounts,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups="",resources=persistentvolumeclaims,verbs=get;list;watch;patch;delete
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete
