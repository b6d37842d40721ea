"""qlinkd: the facility daemon (issue 3). It will drive `qlinkmed.qcore.session` over the network; this
package stays empty until then."""
